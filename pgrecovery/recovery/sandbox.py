"""The sandbox: a throwaway cluster recovered from the repository to a target, for reading the past (see
`pgrecovery.recovery.rescue`). It stops *paused* at the target whenever it can, runs with ``archive_mode = off``
and no archive_command, records no incident, and is stopped and deleted afterwards whatever happens."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from .. import pgtools
from .._pgdb import connect
from .._spool import SPOOL_NAME
from ..cluster import LocalCluster, _owner_ids, default_run_as
from ..errors import ClusterError, ConfigurationError, PgRecoveryError, ToolFailed, ToolNotFound
from ..wal.archiver import WalArchiver
from .plan import RecoveryPlan
from .run import RecoveryResult
from .target import RecoveryTarget

if TYPE_CHECKING:
    import psycopg

    from ..repository import Repository

log = logging.getLogger(__package__)  # one logger per area, whichever module of it logs

# The sandbox must never write into the production archive: archiving off (RecoveryPlan.run(archive=False)), and
# no command to run if it were turned on.
SANDBOX_SETTINGS: dict[str, object] = {"archive_command": "", "hot_standby": "on"}


def workdir_error(workdir: str | None, e: OSError) -> ConfigurationError:
    """One line naming the directory a sandbox could not be made in, and the fix."""
    where = workdir if workdir is not None else tempfile.gettempdir()
    return ConfigurationError(
        f"cannot create the sandbox's directory in {where}: {e.strerror or e}; choose a directory you can write "
        "to, with room for a copy of the cluster (--workdir DIR, workdir=)"
    )


def _check_reachable(base: Path, who: str, workdir: str | None) -> None:
    """As root, the server runs as ``who``: it must reach the sandbox's directory through every parent."""
    try:
        pgtools.run(["test", "-w", str(base)], run_as=who, cwd="/", what="test", timeout=60)
    except (ToolFailed, ToolNotFound):
        where = workdir if workdir is not None else tempfile.gettempdir()
        raise ConfigurationError(
            f"PostgreSQL's OS user {who!r} cannot reach {where} (the sandbox's server runs as {who}): choose a "
            f"directory whose every parent {who} can enter (--workdir DIR, workdir=)"
        ) from None


def _sandbox_target(target: RecoveryTarget) -> RecoveryTarget:
    """The same target, paused there when PostgreSQL allows it (a target of ``latest`` always promotes)."""
    if target.kind == "latest":
        return target
    return attrs.evolve(target, action="pause")


class Sandbox:
    """A throwaway cluster recovered from ``repo`` to ``target``, for reading the past.

    Use it as a context manager; entering yields the running `LocalCluster`, leaving stops it and removes its
    directory (also on errors and KeyboardInterrupt):

    >>> with Sandbox(repo, RecoveryTarget.name("before_upgrade")) as pg:                  # doctest: +SKIP
    ...     print(pg.query("select count(*) from orders", dbname="shop"))

    The plan (which base backup, whether the archive reaches the target) is made when the object is built, so a
    target that cannot be reached is refused before anything is restored. ``state`` says how the sandbox ended
    up: ``paused`` at the target, or ``promoted`` (see the module's notes). ``workdir`` holds the sandbox's
    directory (default: the system's temporary directory; when running as root, PostgreSQL's OS user must be
    able to reach it). ``python`` is the interpreter restore_command runs (default: this one).
    """

    def __init__(
        self,
        repo: Repository,
        target: RecoveryTarget | None = None,
        *,
        backup_id: str | None = None,
        workdir: str | os.PathLike[str] | None = None,
        python: str | None = None,
        timeout: float = 600,
    ) -> None:
        self.repo = repo
        self.requested = target or RecoveryTarget.latest()
        self.target = _sandbox_target(self.requested)
        self.plan = RecoveryPlan(repo, self.target, backup_id=backup_id, python=python)
        self.workdir = os.fspath(workdir) if workdir is not None else None
        self.timeout = timeout
        self.base: Path | None = None
        self.cluster: LocalCluster | None = None
        self.result: RecoveryResult | None = None
        self.state: str | None = None  # paused (at the target) or promoted (see start)

    @property
    def backup_id(self) -> str:
        return self.plan.backup.id

    def start(self) -> LocalCluster:
        """Restore the base backup, replay WAL up to the target, and return the running cluster (paused there, or
        promoted: see `state`)."""
        if self.base is not None:
            raise ClusterError("this sandbox is already started: use a new Sandbox for another target")
        try:
            base = Path(tempfile.mkdtemp(prefix="pgrecovery-sandbox-", dir=self.workdir))
        except OSError as e:
            raise workdir_error(self.workdir, e) from None
        self.base = base
        try:
            who = default_run_as()
            ids = _owner_ids(who)  # as root: the server's OS user must own the data dir's parent
            if ids is not None:
                os.chown(base, *ids)
            base.chmod(0o700)
            if who is not None:
                _check_reachable(base, who, self.workdir)
            log.info("sandbox: recovering %s to %s in %s", self.plan.backup.id, self.target.describe(), base)
            result = self.plan.run(
                base / "data",
                archive=False,
                settings=dict(SANDBOX_SETTINGS),
                record_incident=False,
                timeout=self.timeout,
            )
            self.result = result
            self.state = result.state
            cluster = result.cluster
            self.cluster = cluster
            if result.state == "paused" and _startup_locks(cluster):
                # The target lies inside a transaction that holds ACCESS EXCLUSIVE locks (a DROP TABLE, a
                # TRUNCATE, an ALTER TABLE not committed yet at the target): replay holds them while paused and
                # every read of those tables would wait forever. Promoting ends recovery, which aborts that
                # transaction and releases them; the new timeline stays here (archive_mode is off).
                log.info("sandbox: the target is inside a transaction holding exclusive locks: promoting it")
                cluster.promote(wait=True, timeout=int(self.timeout))
                cluster.wait_ready(timeout=self.timeout)
                self.state = "promoted"
        except BaseException:
            self.close()
            raise
        return cluster

    def close(self) -> None:
        """Stop the server (immediately: nothing in it is kept), wait for a WAL prefetcher, remove the directory."""
        base, self.base, self.cluster = self.base, None, None
        if base is None:
            return
        data = base / "data"
        server = LocalCluster(data_dir=data, log_file=base / "data.log")
        try:
            if server.is_running():
                server.stop(mode="immediate")
        except (PgRecoveryError, OSError) as e:
            log.warning("could not stop the sandbox server in %s: %s", data, e)
        with contextlib.suppress(PgRecoveryError, OSError):
            WalArchiver(self.repo).wait_for_prefetch(data / SPOOL_NAME, timeout=60)
        shutil.rmtree(base, ignore_errors=True)
        log.info("sandbox %s removed", base)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _startup_locks(cluster: LocalCluster) -> int:
    """How many ACCESS EXCLUSIVE locks WAL replay holds (for transactions still open at the target)."""
    with connect_utf8(cluster.conninfo(), "the sandbox", autocommit=True) as conn:
        row = conn.execute(
            "select count(*) from pg_locks l join pg_stat_activity a on a.pid = l.pid "
            "where a.backend_type = 'startup' and l.mode = 'AccessExclusiveLock' and l.granted"
        ).fetchone()
    return int(row[0]) if row else 0


@contextlib.contextmanager
def sandbox_at(
    repo: Repository,
    target: RecoveryTarget | None = None,
    *,
    backup_id: str | None = None,
    workdir: str | os.PathLike[str] | None = None,
    python: str | None = None,
    timeout: float = 600,
) -> Iterator[LocalCluster]:
    """A running `LocalCluster` recovered from ``repo`` to ``target`` (see `Sandbox`), removed on exit."""
    with Sandbox(repo, target, backup_id=backup_id, workdir=workdir, python=python, timeout=timeout) as cluster:
        yield cluster


def connect_utf8(conninfo: str, what: str, *, autocommit: bool = False) -> psycopg.Connection[tuple[Any, ...]]:
    """A connection (`pgrecovery._pgdb.connect`) that exchanges text as UTF-8, whatever the server's encoding:
    rescued values travel as PostgreSQL's text. A failure to connect is a one-line `DatabaseError` naming ``what``.
    """
    import psycopg
    from psycopg.conninfo import make_conninfo

    with contextlib.suppress(psycopg.Error):  # an unparseable conninfo: connect() says so, in one line
        conninfo = make_conninfo(conninfo, client_encoding="UTF8")
    return connect(conninfo, autocommit=autocommit, timeout=30, what=f"connect to {what}")


__all__ = ["SANDBOX_SETTINGS", "Sandbox", "connect_utf8", "sandbox_at", "workdir_error"]
