"""Declarative backup policies: what to back up, how often, where to, how long to keep it, how to check it.

A policy is a TOML file (see docs/policy.md) or a `BackupPolicy` built in Python. `run_policy` runs the jobs that
are due and records each outcome in a local state file; it is meant to be called from cron every few minutes:

- a job is due when its last successful run started before its schedule's previous fire time (with no record
  in the state file, a backup job looks at the newest backup of its kind in the repository instead);
- a failed job is recorded as failed and is due again at the next call; the other jobs still run;
- one run at a time: an exclusive ``fcntl`` lock on a file in the state directory; a second call is refused
  with `PolicyLocked`, naming the process that holds it and since when;
- the state file is written atomically (temporary file, fsync, rename) after every job.

Every job is one public API call: `LogicalBackup`, `GlobalsBackup`, `ClusterBackup`, `BaseBackup`,
`Verifier.verify`, `copy_repository`, `retention.expire`, `WalArchiver.cleanup`.

>>> policy = load_policy("/etc/pgrecovery/policy.toml")          # doctest: +SKIP
>>> result = run_policy(policy)                                  # doctest: +SKIP
>>> [(j.name, j.status) for j in result.jobs]                    # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs

from .._redact import redact_url, scrub
from ..errors import ConfigurationError, PgRecoveryError
from .jobs import BACKUP_KINDS, BackupPolicy, Job, RepositoryRef, _as_list, _backup_object
from .results import JobRun, PolicyRun, Status
from .schedule import _utc
from .state import _lock, _State, default_state_dir

if TYPE_CHECKING:
    from ..manifest import BackupManifest
    from ..monitoring import StatusTable
    from ..repository import Repository

log = logging.getLogger(__package__)  # one logger per area, whichever module of it logs

# -- running --------------------------------------------------------------------------------------------------


def _fmt(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC")


def _database_of(conninfo: str) -> str | None:
    """The database a logical backup job dumps, as libpq would choose it (None when it cannot be told)."""
    from ..pgtools import conninfo_dict

    try:
        parts = conninfo_dict(conninfo)
    except ConfigurationError:
        return None
    user = parts.get("user") or os.environ.get("PGUSER")
    if not user:
        with contextlib.suppress(Exception):
            user = getpass.getuser()
    return parts.get("dbname") or os.environ.get("PGDATABASE") or user


class _Run:
    """One `run_policy` call: the repositories it opened, the state, the clock."""

    def __init__(self, policy: BackupPolicy, state: _State, now: datetime, fake_clock: bool) -> None:
        self.policy, self.state, self.now, self.fake_clock = policy, state, now, fake_clock
        self._repos: dict[str, Repository] = {}
        self._t0 = time.monotonic()

    def clock(self) -> datetime:
        return self.now + timedelta(seconds=time.monotonic() - self._t0)

    def repo(self, ref: RepositoryRef) -> Repository:
        if ref.url not in self._repos:
            self._repos[ref.url] = ref.open()
        return self._repos[ref.url]

    # -- is it due? -----------------------------------------------------------------------------------------
    def newest_backup(self, job: Job) -> BackupManifest | None:
        if job.kind not in BACKUP_KINDS:
            return None
        found = self.repo(self.policy.repository).backups(job.kind)
        if job.kind == "logical":
            database = _database_of(str(job.options.get("dbname", "")))
            if database is not None:
                found = [m for m in found if m.database == database]
        return found[-1] if found else None

    def decide(self, job: Job, force: bool) -> JobRun:
        schedule, now = job.schedule, self.now
        scheduled, following = schedule.previous(now), schedule.following(now)

        def verdict(status: Status, reason: str, last: datetime | None = None) -> JobRun:
            return JobRun(
                name=job.name,
                kind=job.kind,
                schedule=schedule.describe(),
                status=status,
                reason=reason,
                scheduled_at=scheduled,
                next_at=following,
                last_success=last,
            )

        if not job.enabled:
            return verdict("disabled", "paused: enabled = false")
        last, _ = self.state.last_success(job.name)
        origin = "last success"
        if last is None:
            try:
                newest = self.newest_backup(job)
            except PgRecoveryError as e:
                return verdict("due", f"never ran here, and the repository cannot be read: {scrub(str(e))}")
            if newest is not None:
                last, origin = newest.started_at, f"newest {job.kind} backup in the repository ({newest.id})"
        failed_at, error = self.state.last_failure(job.name)
        retry = ""
        if failed_at is not None and (last is None or failed_at >= last):
            retry = f"; retrying after the failure at {_fmt(failed_at)}: {error}"
        if force:
            return verdict("due", "forced" + retry, last)
        if last is None:
            what = "no record in the state file"
            if job.kind in BACKUP_KINDS:
                what += f", and no {job.kind} backup in the repository"
            return verdict("due", f"never ran ({what})" + retry)
        if last < scheduled:
            return verdict("due", f"scheduled at {_fmt(scheduled)}; {origin} started {_fmt(last)}" + retry, last)
        return verdict(
            "not-due",
            f"{origin} started {_fmt(last)}, after the scheduled time {_fmt(scheduled)}; next at {_fmt(following)}",
            last,
        )

    # -- running one job -----------------------------------------------------------------------------------
    def execute(self, job: Job, planned: JobRun) -> JobRun:
        started = self.clock()
        t0 = time.monotonic()
        log.info("job %s (%s) started: %s", job.name, job.kind, planned.reason)
        backup_id: str | None = None
        detail: dict[str, Any] = {}
        error: str | None = None
        try:
            backup_id, detail, error = _RUNNERS[job.kind](self, job)
        except PgRecoveryError as e:
            error = scrub(str(e))
        except Exception as e:  # one broken job must not stop the others: recorded and logged
            error = scrub(f"unexpected {type(e).__name__}: {e}")
            log.debug("job %s: traceback", job.name, exc_info=True)
        seconds = time.monotonic() - t0
        if error is None:
            what = _summary(job.kind, detail) if backup_id is None else f"backup {backup_id}"
            what = f"verified {what}" if job.kind == "verify" else what
            log.info("job %s (%s) finished in %.1f s: %s", job.name, job.kind, seconds, what)
        else:
            log.error("job %s (%s) failed after %.1f s: %s", job.name, job.kind, seconds, error)
        return attrs.evolve(
            planned,
            status="failed" if error else "succeeded",
            started_at=started,
            seconds=seconds,
            backup_id=backup_id,
            error=error,
            detail=detail,
        )


def _record_status(table: StatusTable, run: _Run, job: Job, done: JobRun) -> None:
    from ..monitoring import RunRecord

    repo = run.policy.repository.url
    record = RunRecord(
        kind=job.kind,
        status="failure" if done.status == "failed" else "success",
        backup_id=done.backup_id,
        file_path=f"{redact_url(repo).rstrip('/')}/backups/{done.backup_id}" if done.backup_id else None,
        size_bytes=done.detail.get("size") if isinstance(done.detail.get("size"), int) else None,
        duration_seconds=round(done.seconds or 0.0, 3),
        error=done.error,
    )
    try:
        table.record(record)
    except PgRecoveryError as e:
        log.warning("could not record job %s in the status table: %s", job.name, e)


def _summary(kind: str, detail: Mapping[str, Any]) -> str:
    if kind == "copy":
        parts = [
            f"{c['target']}: {len(c['backups_copied'])} backup(s), {c['wal_copied']} WAL file(s) copied"
            for c in detail.get("copies", [])
        ]
        return "; ".join(parts) or "nothing to copy"
    if kind == "expire":
        parts = [
            f"{r['repository']}: {len(r['deleted'])} backup(s), {r['wal_removed']} WAL file(s) deleted"
            for r in detail.get("repositories", [])
        ]
        return "; ".join(parts)
    if kind == "wal-cleanup":
        return f"{detail.get('removed', 0)} WAL file(s) deleted"
    return "done"


_Outcome = tuple[str | None, dict[str, Any], str | None]  # (backup id, detail, error)


def _run_backup(run: _Run, job: Job) -> _Outcome:
    m = _backup_object(job.kind, job.options).run(run.repo(run.policy.repository))
    detail: dict[str, Any] = {"size": m.size}
    if m.database:
        detail["database"] = m.database
    return m.id, detail, None


def _run_verify(run: _Run, job: Job) -> _Outcome:
    from ..verify import Verifier

    repo = run.repo(run.policy.repository)
    opts = dict(job.options)
    target = str(opts.pop("backup", "latest"))
    kind = opts.pop("backup_kind", None)
    if target == "latest" and kind:
        target = repo.get("latest", kind).id
    workdir = opts.pop("workdir", None)
    report = Verifier(repo, workdir=workdir).verify(target, **opts)
    detail = {"ok": report.ok, "checks": {c.name: c.status for c in report.checks}}
    error = None
    if not report.ok:
        error = f"backup {report.backup_id} failed verification: " + "; ".join(
            f"{c.name}: {c.detail}" for c in report.failures
        )
    return report.backup_id, detail, error


def _run_copy(run: _Run, job: Job) -> _Outcome:
    from ..copies import copy_repository

    wanted = set(_as_list(job.options.get("to", [])))
    targets = [c for c in run.policy.copies if not wanted or c.url in wanted or c.display_url in wanted]
    source = run.repo(run.policy.repository)
    results: list[dict[str, Any]] = []
    errors: list[str] = []
    for ref in targets:
        try:
            result = copy_repository(
                source,
                run.repo(ref),
                workers=int(job.options.get("workers", 4)),
                wal=bool(job.options.get("wal", True)),
            )
        except PgRecoveryError as e:
            errors.append(f"copy to {ref.display_url}: {scrub(str(e))}")
            results.append({"target": ref.display_url, "ok": False, "error": scrub(str(e))})
            continue
        results.append(result.to_dict())
        if not result.ok:
            problems = [*result.conflicts, *result.corrupt]
            errors.append(
                f"copy to {ref.display_url}: {len(result.conflicts)} conflict(s), {len(result.corrupt)} corrupt "
                f"source object(s), e.g. {problems[0]}"
            )
    return None, {"copies": results}, "; ".join(errors) or None


def _run_expire(run: _Run, job: Job) -> _Outcome:
    from ..retention import expire

    policy = run.policy.retention_of(job)
    assert policy is not None  # BackupPolicy checks it
    refs = [run.policy.repository, *(run.policy.copies if job.options.get("include_copies") else ())]
    results: list[dict[str, Any]] = []
    errors: list[str] = []
    for ref in refs:
        try:
            result = expire(run.repo(ref), policy, now=run.now if run.fake_clock else None)
        except PgRecoveryError as e:
            errors.append(f"expire in {ref.display_url}: {scrub(str(e))}")
            results.append({"repository": ref.display_url, "error": scrub(str(e)), "deleted": [], "wal_removed": 0})
            continue
        results.append(
            {"repository": ref.display_url, "deleted": list(result.deleted), "wal_removed": len(result.wal_removed)}
        )
    return None, {"policy": policy.describe(), "repositories": results}, "; ".join(errors) or None


def _run_wal_cleanup(run: _Run, job: Job) -> _Outcome:
    from ..wal.archiver import WalArchiver

    kwargs: dict[str, Any] = {}
    if "segment_size" in job.options:
        kwargs["segment_size"] = job.options["segment_size"]
    archiver = WalArchiver(run.repo(run.policy.repository), **kwargs)
    removed = archiver.cleanup(job.options.get("keep_from"), job.options.get("timeline"))
    detail: dict[str, Any] = {"removed": len(removed)}
    if removed:
        detail.update(first=removed[0], last=removed[-1])
    return None, detail, None


_RUNNERS: Final[dict[str, Callable[[_Run, Job], _Outcome]]] = {
    **dict.fromkeys(BACKUP_KINDS, _run_backup),
    "verify": _run_verify,
    "copy": _run_copy,
    "expire": _run_expire,
    "wal-cleanup": _run_wal_cleanup,
}


def state_paths(policy: BackupPolicy, state_dir: str | os.PathLike[str] | None = None) -> tuple[Path, Path]:
    """(state file, lock file) of a policy: ``<state_dir>/<name>.state.json`` and ``<state_dir>/<name>.lock``."""
    directory = Path(state_dir) if state_dir is not None else None
    if directory is None:
        directory = Path(policy.state_dir) if policy.state_dir else default_state_dir()
    return directory / f"{policy.name}.state.json", directory / f"{policy.name}.lock"


def run_policy(
    policy: BackupPolicy,
    *,
    now: datetime | None = None,
    dry_run: bool = False,
    state_dir: str | os.PathLike[str] | None = None,
    jobs: Sequence[str] | None = None,
    force: bool = False,
    status_table: StatusTable | None = None,
) -> PolicyRun:
    """Run the jobs of ``policy`` that are due at ``now`` (default: the current time), in the policy's order.

    With ``status_table`` every job that runs is also recorded there (see docs/monitoring.md), so that
    ``pgrecovery check`` and ``metrics`` see it; a failure to record is logged, never fatal.

    ``dry_run`` only says which jobs are due and why (no lock taken, nothing written). ``jobs`` limits the call to
    these job names; ``force`` runs them whether due or not. A failed job is recorded and does not stop the
    others; the result says what happened (it does not raise for a failed job). Raises `PolicyLocked` when
    another call holds the policy's lock, `ConfigurationError` for an unknown job name or a broken state file.
    """
    clock = _utc(now) if now is not None else datetime.now(UTC)
    selected = list(policy.jobs) if jobs is None else [policy.job(name) for name in jobs]
    state_file, lock_file = state_paths(policy, state_dir)
    state = _State(state_file, policy.name)

    def result(found: list[JobRun]) -> PolicyRun:
        return PolicyRun(
            policy=policy.name,
            source=policy.source,
            now=clock,
            dry_run=dry_run,
            state_file=str(state_file),
            jobs=tuple(found),
        )

    if dry_run:
        run = _Run(policy, state.load(), clock, now is not None)
        return result([run.decide(job, force) for job in selected])
    try:
        state_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigurationError(
            f"cannot create the state directory {state_file.parent}: {e.strerror or e}; choose another one "
            "(state_dir in the policy, --state-dir, or PGRECOVERY_STATE_DIR)"
        ) from None
    found: list[JobRun] = []
    with _lock(lock_file):
        run = _Run(policy, state.load(), clock, now is not None)
        for job in selected:
            planned = run.decide(job, force)
            if planned.status != "due":
                log.debug("job %s (%s): %s", job.name, job.kind, planned.reason)
                found.append(planned)
                continue
            done = run.execute(job, planned)
            if status_table is not None:
                _record_status(status_table, run, job, done)
            state.record(done)
            state.save()
            found.append(done)
    return result(found)
