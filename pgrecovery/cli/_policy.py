"""The ``run-policy`` verb: run the jobs of a backup policy that are due (see docs/policy.md). Made for cron.

Output: one log line per job on stderr (started, finished with its duration and backup id, failed with the
error); on stdout, a line per job that ran (nothing when nothing was due, so that cron stays quiet), the whole
table with ``--dry-run``, or the result as JSON with ``--json``. Exit code 0 when no job failed, 1 when one
failed or another run holds the lock, 2 for a bad policy file or option.
"""

from __future__ import annotations

import argparse
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ._common import add_verb, emit, status_options, storage_options, table
from .exitcodes import EXIT_FAILED, EXIT_OK

if TYPE_CHECKING:
    from ..policy import BackupPolicy, PolicyRun


def add_verbs(verbs: Any, common: argparse.ArgumentParser) -> None:
    p = add_verb(
        verbs,
        "run-policy",
        common,
        "run the jobs of a backup policy that are due (safe to call from cron every few minutes)",
        description="Run the jobs of a policy file (TOML, see docs/policy.md) whose schedule says they are due, "
        "one call at a time (a lock in the state directory). --repo replaces the policy's repository.",
    )
    p.add_argument("file", metavar="FILE", help="the policy file (TOML)")
    p.add_argument("--dry-run", action="store_true", help="show which jobs are due and why; run nothing")
    p.add_argument(
        "--state-dir",
        metavar="DIR",
        help="where the state and lock files live (default: the policy's state_dir, $PGRECOVERY_STATE_DIR, "
        "/var/lib/pgrecovery for root, else ~/.local/state/pgrecovery)",
    )
    p.add_argument("--job", action="append", dest="jobs", metavar="NAME", help="only this job (repeatable)")
    p.add_argument("--force", action="store_true", help="run the selected jobs even when they are not due")
    status_options(p)
    p.add_argument(
        "--now",
        metavar="TIME",
        help="with --dry-run: judge the schedules at this time instead (ISO 8601, e.g. 2026-03-15T02:00Z)",
    )


def _policy(args: argparse.Namespace) -> BackupPolicy:
    import attrs

    from ..policy import RepositoryRef, load_policy

    policy = load_policy(args.file)
    options = storage_options(args)
    url = getattr(args, "repo", None)
    if url:
        return attrs.evolve(policy, repository=RepositoryRef(url=url, storage_options=options))
    if options:
        merged = {**policy.repository.storage_options, **options}
        return attrs.evolve(policy, repository=RepositoryRef(url=policy.repository.url, storage_options=merged))
    return policy


def _now(args: argparse.Namespace) -> datetime | None:
    from ..errors import ConfigurationError

    if args.now is None:
        return None
    if not args.dry_run:
        raise ConfigurationError("--now goes with --dry-run only: a real run always uses the current time")
    try:
        value = datetime.fromisoformat(args.now)
    except ValueError:
        raise ConfigurationError(f"--now {args.now!r}: expected an ISO 8601 time such as 2026-03-15T02:00Z") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value is not None else "-"


def _text(result: PolicyRun) -> str:
    if result.dry_run:
        head = f"policy {result.policy} at {_when(result.now)} UTC (state: {result.state_file})"
        rows = [("job", "kind", "status", "schedule", "why")]
        rows += [(j.name, j.kind, j.status, j.schedule, j.reason) for j in result.jobs]
        return head + "\n" + table(rows)
    lines = []
    for j in result.ran:
        if j.status == "succeeded":
            what = f"backup {j.backup_id}" if j.backup_id else "done"
            what = f"verified {what}" if j.kind == "verify" else what
            lines.append(f"succeeded  {j.name} ({j.kind}) in {j.seconds or 0:.1f} s: {what}")
        else:
            lines.append(f"FAILED     {j.name} ({j.kind}) after {j.seconds or 0:.1f} s: {j.error}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import sys

    from ..policy import run_policy

    # The per-job lines are the point of this verb: show them without --verbose (-v adds the jobs not due).
    logging.getLogger("pgrecovery.policy").setLevel(logging.DEBUG if getattr(args, "verbose", False) else logging.INFO)
    policy = _policy(args)
    status = None
    if args.status_dbname:
        from ..monitoring import DEFAULT_STATUS_TABLE, StatusTable

        status = StatusTable(args.status_dbname, args.status_table or DEFAULT_STATUS_TABLE)
    result = run_policy(
        policy,
        now=_now(args),
        dry_run=args.dry_run,
        state_dir=args.state_dir,
        jobs=args.jobs,
        force=args.force,
        status_table=status,
    )
    text = _text(result)
    if getattr(args, "json", False) or text:
        emit(args, result.to_dict(), text)
    sys.stdout.flush()
    return EXIT_OK if result.ok else EXIT_FAILED


__all__ = ["add_verbs", "run"]
