"""Running a recovery: the run as data (`RecoveryRun`), then a small runner that starts the server, waits until
the target is reached and its action applied, reads the position reached, and records the run as an `Incident`.

`RecoveryPlan.run` decides everything first (the backup, the target, where and how the server runs), restores the
data directory, then hands the `RecoveryRun` to `recover`. The order of a run:

1. ``plan``: the target and the backup (the plan's choice), this host's server programs found for its major;
2. ``restore``: the data directory materialised and configured (skipped when it was prepared beforehand);
3. the server started; ``replay``: polled until it leaves recovery (``promote``), pauses (``pause``) or stops
   (``shutdown``), within the timeout;
4. the position reached read (unless it shut down), the server stopped unless kept running;
5. the incident stored under ``incidents/`` (a failure to store it is logged, never fails the recovery).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import re
import signal
import socket
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs

from .. import _walclient, _walnames
from .._pgdb import connect
from .._spool import SPOOL_NAME
from ..cluster import LocalCluster, port_choice
from ..errors import AlreadyExists, ClusterError, PgRecoveryError, TargetUnreachable
from ..manifest import BackupManifest
from ..repository import Repository
from ..wal.commands import restore_command
from ..wal.worker import start_for_recovery
from .target import Action, RecoveryTarget

log = logging.getLogger(__package__)  # one logger per area, whichever module of it logs


def _restored_wal(cluster: LocalCluster, segment_size: int) -> list[str]:
    """The WAL segments the server replayed from the archive, in order: those its log says restore_command
    restored, and those it read from pg_wal where the prefetcher staged them (listed by restore_command's shell in
    the queue's ``.taken``, `pgrecovery.wal.commands.restore_command`)."""
    found: list[str] = []
    if cluster.log_file is not None and cluster.log_file.exists():
        text = cluster.log_file.read_text(errors="replace")
        found = re.findall(r'restored log file "([0-9A-F]{24})" from archive', text)
    with contextlib.suppress(OSError):
        staged = (cluster.data_dir / SPOOL_NAME / "prefetch" / ".taken").read_text(errors="replace").split()
        found += [n for n in staged if _walnames.is_segment(n)]
    # replay reads a timeline's segments in order: those between two it names were read too (from pg_wal, staged,
    # while the prefetcher was not there to see it)
    segments = set(found)
    for tli in {n[:8] for n in found}:
        same = sorted(n for n in found if n[:8] == tli)
        segments.update(_walnames.segment_range(same[0], same[-1], segment_size))
    return sorted(segments, key=lambda n: (n[8:], n[:8]))  # segment number, then timeline


def server_major(server_version: str) -> int | None:
    """The major version in a manifest's ``server_version`` ("15.18 (Debian ...)" -> 15), None if unknown."""
    found = re.match(r"\s*(\d+)", server_version)
    return int(found.group(1)) if found else None


@attrs.frozen(kw_only=True)
class RecoveryResult:
    """What a recovery reached, and how long it took (the recovery time, for RTO reporting).

    ``incident`` is the record of the run (see `Incident`); ``incident_key`` where it was stored in the
    repository (None when it could not be written there: the recovery itself is not failed for that).

    The recovered server is left running (unless ``run(keep_running=False)`` or a ``shutdown`` action):
    ``cluster`` is it as a `LocalCluster` (connect, query, promote), ``stop()`` stops it, and the result is a
    context manager that stops it on leaving the block. Stopping never removes the data directory:

    >>> with plan.run("/srv/restore") as result:                                     # doctest: +SKIP
    ...     print(result.cluster.query("select count(*) from orders", dbname="shop"))
    """

    backup_id: str
    target: str
    pgdata: str
    port: int
    state: str  # promoted, paused, shut down
    end_lsn: str | None
    timeline: int | None
    last_transaction_time: str | None
    restore_seconds: float
    recovery_seconds: float
    wal_restored: int = 0
    incident: Incident | None = None
    incident_key: str | None = None
    _cluster: LocalCluster | None = attrs.field(default=None, alias="cluster", repr=False, eq=False)

    @property
    def cluster(self) -> LocalCluster:
        """The recovered server (running or not) as a `LocalCluster`, on ``port``."""
        return self._cluster if self._cluster is not None else LocalCluster(data_dir=Path(self.pgdata), port=self.port)

    def stop(self, mode: str = "fast") -> None:
        """Stop the recovered server (a no-op when it is not running); its data directory stays."""
        self.cluster.stop(mode=mode)

    def __enter__(self) -> RecoveryResult:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self, filter=lambda a, _: a.name != "_cluster")


@attrs.frozen(kw_only=True)
class IncidentStep:
    """One step of a recovery, with when it ended."""

    at: datetime
    step: str
    detail: str = ""


@attrs.frozen(kw_only=True)
class Incident:
    """The record of one recovery, for the incident report: what was asked, what was used, what came back, and
    the timeline of steps. Stored as JSON under ``incidents/`` in the repository."""

    id: str
    host: str
    target: str
    backup_id: str
    backup_finished_at: datetime
    pgdata: str
    started_at: datetime
    finished_at: datetime
    state: str
    end_lsn: str | None
    timeline: int | None
    last_transaction_time: str | None
    wal_restored: int
    first_wal: str | None
    last_wal: str | None
    restore_seconds: float
    recovery_seconds: float
    steps: tuple[IncidentStep, ...]

    def to_dict(self) -> dict[str, Any]:
        def value(_: Any, __: Any, v: Any) -> Any:
            return v.isoformat() if isinstance(v, datetime) else v

        return attrs.asdict(self, value_serializer=value)


def _absolute(path: str | os.PathLike[str]) -> Path:
    return Path(path).absolute()


@attrs.frozen(kw_only=True)
class RecoveryRun:
    """One recovery run, decided before anything is written: the backup and target (the plan's), the data
    directory, where the server listens, how long to wait, and what to do afterwards."""

    repo: Repository
    backup: BackupManifest
    target: RecoveryTarget
    pgdata: Path = attrs.field(converter=_absolute)
    major: int | None  # the backup's server major: this host's pg_ctl must be that one
    port: int = 0  # 0: a free one (of ``ports`` when given)
    ports: tuple[int, ...] | None = attrs.field(default=None, converter=port_choice)
    timeout: float = 600
    keep_running: bool = True
    record_incident: bool = True
    python: str | None = None  # the interpreter of pgrecovery's restore_command (the plan's)
    key_file: str | None = None  # an encrypted repository's key file, as restore_command is given it

    @property
    def action(self) -> Action:
        """What the server does at the target (``latest`` replays to the end, then promotes)."""
        return self.target.action if self.target.kind != "latest" else "promote"


@attrs.define
class Journal:
    """The steps of a run as they happen, for its `Incident`."""

    started_at: datetime = attrs.field(factory=lambda: datetime.now(UTC))
    steps: list[IncidentStep] = attrs.field(factory=list)

    def step(self, what: str, detail: str = "") -> None:
        self.steps.append(IncidentStep(at=datetime.now(UTC), step=what, detail=detail))


@attrs.frozen(kw_only=True)
class _Reached:
    """Where a recovered server stands: its state and (unless it shut down) the position it reached."""

    state: str
    end_lsn: str | None = None
    timeline: int | None = None
    last_transaction_time: str | None = None


def recover(run: RecoveryRun, journal: Journal, restore_seconds: float) -> RecoveryResult:
    """Start the server on the prepared data directory of ``run``, wait for its target, and report (steps 3-5)."""
    t1 = time.monotonic()
    cluster = LocalCluster(data_dir=run.pgdata, port=run.port, ports=run.ports, major=run.major)
    _warm_worker(run, cluster)
    _start(run, cluster)
    state = _wait_for_target(run, cluster)
    recovered = time.monotonic() - t1
    phys = run.backup.physical
    wal = _restored_wal(cluster, phys.wal_segment_size if phys is not None else _walnames.DEFAULT_SEGMENT_SIZE)
    journal.step(
        "replay", f"{len(wal)} WAL file(s) restored from the archive" + (f", {wal[0]} .. {wal[-1]}" if wal else "")
    )
    reached = _Reached(state=state) if state == "shut down" else _position(cluster, state)
    if state != "shut down" and not run.keep_running:
        cluster.stop()
    journal.step(state, f"at {reached.end_lsn} on timeline {reached.timeline}" if reached.end_lsn else "")
    timing = {"restore_seconds": round(restore_seconds, 3), "recovery_seconds": round(recovered, 3)}
    common: dict[str, Any] = {
        "backup_id": run.backup.id,
        "target": run.target.describe(),
        "pgdata": str(run.pgdata),
        "state": state,
        "end_lsn": reached.end_lsn,
        "timeline": reached.timeline,
        "last_transaction_time": reached.last_transaction_time,
        "wal_restored": len(wal),
        **timing,
    }
    incident = Incident(
        id=f"{journal.started_at:%Y%m%dT%H%M%SZ}-recovery",
        host=socket.gethostname(),
        backup_finished_at=run.backup.finished_at,
        started_at=journal.started_at,
        finished_at=datetime.now(UTC),
        first_wal=wal[0] if wal else None,
        last_wal=wal[-1] if wal else None,
        steps=tuple(journal.steps),
        **common,
    )
    return RecoveryResult(
        **common,
        port=cluster.port,
        incident=incident,
        incident_key=record_incident(run.repo, incident) if run.record_incident else None,
        cluster=cluster,
    )


def _warm_worker(run: RecoveryRun, cluster: LocalCluster) -> None:
    """Where the data directory recovers through pgrecovery's restore_command (as `RecoveryPlan.restore` writes
    it) in archive recovery, start its WAL worker now, prefetching from the backup's first segment, so that the
    server's first asks find it warm and the first segments there (`pgrecovery.wal.worker.start_for_recovery`).
    Anything else (a restore_command of the caller's, a standby) is left to the server's own calls."""
    phys = run.backup.physical
    data = run.pgdata
    if phys is None or not (data / "recovery.signal").exists() or (data / "standby.signal").exists():
        return
    if not cluster.configured("restore_command", restore_command(run.repo.url, run.python, key_file=run.key_file)):
        return
    try:
        start_for_recovery(
            run.repo.url,
            str(data),
            phys.start_wal,
            python=run.python,
            run_as=cluster.run_as,
            key_file=run.key_file,
            segment_size=phys.wal_segment_size,
        )
    except (OSError, PgRecoveryError) as e:  # the server's first restore_command call starts one instead
        log.info("WAL worker not started ahead of recovery: %s", e)


class EarlyWorker:
    """The WAL worker of a data directory being restored by `RecoveryPlan.run`, started as soon as the backup's
    directories exist, while its files are still being written: by the time the server starts, the worker's
    imports, its storage connections and the archive's listing are done and the first segments queued (and staged
    in ``pg_wal`` once ``recovery.signal`` is there), instead of the server's first asks waiting for all that.
    Started after the restore, it was still starting when the server first asked (the history probe, then the
    first segments): 130-300 ms of every local recovery (measured).

    Only where the server is to recover through pgrecovery's own restore_command (no restore_command among the
    caller's settings), and not for a delta restore (which may remove files the backup lacks). A restore that
    fails stops it (`cancel`) before its directory is removed. One that outlives `AWAIT_SERVER` (a long restore)
    is left to leave on its own: the server's first restore_command call starts a worker again."""

    def __init__(self, backup: BackupManifest, target: Path, key_file: str | None) -> None:
        self.backup, self.target, self.key_file = backup, target, key_file
        self.child: subprocess.Popen[bytes] | None = None

    @classmethod
    def wanted(
        cls, backup: BackupManifest, target: Path, settings: dict[str, object], key_file: str | None
    ) -> EarlyWorker | None:
        if backup.physical is None or any(k.lower() == "restore_command" for k in settings):
            return None
        return cls(backup, target, key_file)

    def start(self, repo: Repository, run_as: str | None, python: str | None) -> None:
        """Start it (called once the directories exist); a failure only leaves the work to restore_command."""
        phys = self.backup.physical
        assert phys is not None
        try:
            if run_as is not None and os.geteuid() == 0:  # the worker, as the server's user, makes its spool there
                pw = pwd.getpwnam(run_as)
                os.chown(self.target, pw.pw_uid, pw.pw_gid)
            self.child = start_for_recovery(
                repo.url,
                str(self.target),
                phys.start_wal,
                python=python,
                run_as=run_as,
                key_file=self.key_file,
                segment_size=phys.wal_segment_size,
            )
        except (OSError, KeyError, PgRecoveryError) as e:
            log.info("WAL worker not started during the restore: %s", e)

    def cancel(self) -> None:
        """Stop it and wait until it has gone: asked over its socket, or, still starting, its session killed."""
        if self.child is None:
            return
        _walclient.stop(str(self.target / SPOOL_NAME), timeout=10)
        if self.child.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(self.child.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.child.wait(10)


def _start(run: RecoveryRun, cluster: LocalCluster) -> None:
    """Start the server; with action ``shutdown`` it may reach the target and stop before pg_ctl sees it ready."""
    try:
        cluster.start(timeout=int(run.timeout))
    except ClusterError as e:
        text = cluster.log_file.read_text(errors="replace") if cluster.log_file and cluster.log_file.exists() else ""
        if not (run.action == "shutdown" and "recovery stopping" in text and not cluster.is_running()):
            raise failure(run, str(e)) from None


def _wait_for_target(run: RecoveryRun, cluster: LocalCluster) -> str:
    """Poll the server until it is promoted, paused or shut down, as its action says; its state then. One session
    is kept and asked every 20 ms: a new connection per question would cost a backend start each time."""
    import psycopg

    deadline = time.monotonic() + run.timeout
    conn: psycopg.Connection[Any] | None = None
    try:
        while time.monotonic() < deadline:
            if not cluster.is_running():
                if run.action == "shutdown":
                    return "shut down"
                raise failure(run, cluster.log_tail())
            try:  # psycopg directly: a server still starting refuses connections, and that is retried
                if conn is None or conn.closed:
                    conn = psycopg.connect(cluster.conninfo(), autocommit=True, connect_timeout=5)
                state = _recovery_state(conn, run.action)
            except psycopg.OperationalError:
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.05)
                continue
            if state:
                return state
            time.sleep(0.02)
    finally:
        if conn is not None:
            conn.close()
    raise TargetUnreachable(
        f"recovery did not reach {run.target.describe()} within {run.timeout:.0f} s",
        target=run.target.describe(),
        backup_id=run.backup.id,
    )


def _recovery_state(conn: Any, action: str) -> str:
    """ "promoted", "paused" (with action pause), or "" while recovery goes on."""
    row = conn.execute("select pg_is_in_recovery()").fetchone()
    if not (row and row[0]):
        return "promoted"
    if action == "pause":  # the pause state exists only during recovery
        row = conn.execute("select pg_get_wal_replay_pause_state()").fetchone()
        return "paused" if row and row[0] == "paused" else ""
    return ""


def _position(cluster: LocalCluster, state: str) -> _Reached:
    """The position a running recovered server reached: LSN, timeline, last replayed transaction's time."""
    with connect(cluster.conninfo(), what="read the recovered position from") as conn:
        row = conn.execute(
            "select coalesce(pg_last_wal_replay_lsn(), pg_current_wal_lsn())::text, "
            "(select timeline_id from pg_control_checkpoint()), pg_last_xact_replay_timestamp()::text"
        ).fetchone()
    if not row:
        return _Reached(state=state)
    return _Reached(state=state, end_lsn=row[0], timeline=int(row[1]), last_transaction_time=row[2])


def record_incident(repo: Repository, incident: Incident) -> str | None:
    """Store the incident record in the repository (a free name under ``incidents/``); a failure here is logged,
    not raised."""
    key = f"incidents/{incident.id}.json"
    text = json.dumps(incident.to_dict(), indent=2, sort_keys=True).encode()
    for n in range(100):
        candidate = key if n == 0 else f"incidents/{incident.id}-{n}.json"
        try:
            repo.put_bytes(candidate, text)
            return candidate
        except AlreadyExists:
            continue
        except PgRecoveryError as e:
            log.warning("could not store the incident record in %s: %s", repo.display_url, e)
            return None
    return None


def failure(run: RecoveryRun, text: str) -> TargetUnreachable:
    """The error for a recovery that stopped short, from the server's log ``text``."""
    fields = {"target": run.target.describe(), "backup_id": run.backup.id}
    if "recovery ended before configured recovery target was reached" in text:
        return TargetUnreachable(
            f"the archive ends before {run.target.describe()}: recovery from {run.backup.id} replayed "
            f"everything archived without reaching it{text}",
            **fields,
        )
    sep = "" if text.startswith("\n") else ": "
    return TargetUnreachable(f"recovery to {run.target.describe()} failed{sep}{text}", **fields)
