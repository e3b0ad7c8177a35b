"""Facts gathered from the sources the checks and metrics read: the database's archiver (``pg_stat_archiver``,
``.ready`` files) and the newest WAL object in the repository."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import attrs

from .. import _walnames, pgtools
from .._pgdb import connect, first_line
from .._redact import redact
from ..errors import DatabaseError
from ..wal.server import read_stat_archiver
from .thresholds import human_duration

if TYPE_CHECKING:
    from ..repository import Repository


@attrs.frozen(kw_only=True)
class _Server:
    """What the database says about WAL archiving."""

    archive_mode: str
    in_recovery: bool
    archived_count: int
    last_archived_wal: str | None
    last_archived_time: datetime | None
    failed_count: int
    last_failed_wal: str | None
    last_failed_time: datetime | None
    current_wal: str | None
    segment_size: int
    ready_count: int | None
    oldest_ready: datetime | None
    ready_error: str | None

    @property
    def archiving(self) -> bool:
        return self.archive_mode == "always" or (self.archive_mode == "on" and not self.in_recovery)

    @property
    def failing(self) -> bool:
        """The latest attempt failed (a failure newer than the latest success)."""
        return self.last_failed_time is not None and (
            self.last_archived_time is None or self.last_failed_time > self.last_archived_time
        )

    def lag(self, now: datetime) -> tuple[timedelta | None, str]:
        """How long the oldest finished segment has waited to be archived, and how that was found."""
        if self.ready_count is not None:
            if self.ready_count == 0 or self.oldest_ready is None:
                return timedelta(0), "nothing waiting to be archived"
            lag = max(now - self.oldest_ready, timedelta(0))
            return lag, f"{self.ready_count} segment(s) waiting, the oldest for {human_duration(lag)}"
        note = f" (archive_status unreadable: {self.ready_error})"
        last, current = self.last_archived_wal, self.current_wal
        if (
            last
            and current
            and not self.failing
            and _walnames.is_segment(last[:24])
            and _walnames.is_segment(current)
            and last[:8] == current[:8]
            and _walnames.segment_number(last[:24], self.segment_size)
            >= _walnames.segment_number(current, self.segment_size) - 1
        ):
            return timedelta(0), "every finished segment is archived" + note
        if self.last_archived_time is not None:
            lag = max(now - self.last_archived_time, timedelta(0))
            return lag, f"last segment archived {human_duration(lag)} ago" + note
        return None, "nothing archived yet" + note


def _server(dbname: str) -> _Server:
    import psycopg

    try:
        with connect(dbname, what="read the archiver's state from") as conn:
            row = conn.execute(
                "select current_setting('archive_mode'), pg_is_in_recovery(), "
                "case when pg_is_in_recovery() then null else pg_walfile_name(pg_current_wal_lsn()) end, "
                "(select setting::bigint from pg_settings where name = 'wal_segment_size')"
            ).fetchone()
            assert row is not None
            stat = read_stat_archiver(conn)
            ready = oldest = error = None
            try:
                counted = conn.execute(
                    "select count(*), min(modification) from pg_ls_archive_statusdir() where name like '%.ready'"
                ).fetchone()
                assert counted is not None
                ready, oldest = int(counted[0]), counted[1]
            except (psycopg.errors.InsufficientPrivilege, psycopg.errors.UndefinedFunction) as e:
                denied = isinstance(e, psycopg.errors.InsufficientPrivilege)
                error = "grant pg_monitor to this role" if denied else first_line(e)
    except psycopg.Error as e:  # connected, but the queries failed
        raise DatabaseError(
            f"cannot read the archiver's state from {pgtools.describe(dbname)}: {redact(first_line(e))}"
        ) from None
    return _Server(
        archive_mode=str(row[0]),
        in_recovery=bool(row[1]),
        archived_count=stat.archived_count,
        last_archived_wal=stat.last_archived_wal,
        last_archived_time=stat.last_archived_time,
        failed_count=stat.failed_count,
        last_failed_wal=stat.last_failed_wal,
        last_failed_time=stat.last_failed_time,
        current_wal=row[2],
        segment_size=int(row[3] or 16 << 20),
        ready_count=ready,
        oldest_ready=oldest,
        ready_error=error,
    )


def _newest_wal(repo: Repository) -> tuple[str, datetime] | None:
    """The newest archived WAL segment (highest timeline, then name) and when it was stored."""
    from ..wal.archiver import WalArchiver

    archiver = WalArchiver(repo)
    for tli in reversed(archiver.timelines()):
        objects = archiver.index(tli)
        names = sorted(n for n in objects if _walnames.is_segment(n[:24]) and not _walnames.is_backup(n))
        if names:
            obj = objects[names[-1]][0]
            return names[-1], _modified(repo, obj.key)
    return None


def _modified(repo: Repository, key: str) -> datetime:
    """When an object was stored."""
    return repo.modified(key)
