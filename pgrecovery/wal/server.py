"""What the WAL area asks the server: the archiver's statistics (the one reader of ``pg_stat_archiver``) and
named restore points.

>>> archiver_status("host=db1", pgdata="/var/lib/postgresql/17/main").failed_count   # doctest: +SKIP
0
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, TypeVar

import attrs

from .. import pgtools
from .._pgdb import connect, first_line
from ..errors import ConfigurationError, DatabaseError

if TYPE_CHECKING:
    import psycopg

STAT_ARCHIVER_SQL: Final = (
    "select archived_count, last_archived_wal, last_archived_time, failed_count, last_failed_wal, "
    "last_failed_time from pg_stat_archiver"
)


@attrs.frozen(kw_only=True)
class ArchiverStatus:
    """``pg_stat_archiver`` plus the number of files waiting in ``pg_wal/archive_status`` (when pgdata is known)."""

    archived_count: int
    last_archived_wal: str | None
    last_archived_time: datetime | None
    failed_count: int
    last_failed_wal: str | None
    last_failed_time: datetime | None
    ready_count: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = attrs.asdict(self)
        for k in ("last_archived_time", "last_failed_time"):
            d[k] = d[k].isoformat() if d[k] else None
        return d


def read_stat_archiver(conn: psycopg.Connection[Any], ready_count: int | None = None) -> ArchiverStatus:
    """``pg_stat_archiver`` read on an open connection: the one place its columns are named."""
    row = conn.execute(STAT_ARCHIVER_SQL).fetchone()
    if row is None:  # pragma: no cover - the view always has one row
        raise DatabaseError("pg_stat_archiver returned no row")
    return ArchiverStatus(
        archived_count=int(row[0]),
        last_archived_wal=row[1],
        last_archived_time=row[2],
        failed_count=int(row[3]),
        last_failed_wal=row[4],
        last_failed_time=row[5],
        ready_count=ready_count,
    )


def archiver_status(conninfo: str = "", pgdata: str | os.PathLike[str] | None = None) -> ArchiverStatus:
    """The server's archiver statistics (``pg_stat_archiver``); ``ready_count`` needs ``pgdata``."""
    ready = None
    if pgdata is not None:
        status_dir = os.path.join(pgdata, "pg_wal", "archive_status")
        try:
            ready = sum(1 for e in os.listdir(status_dir) if e.endswith(".ready"))
        except OSError as e:
            raise ConfigurationError(f"cannot read {status_dir}: {e.strerror or e}") from None
    return _on_server(conninfo, lambda conn: read_stat_archiver(conn, ready))


def create_restore_point(conninfo: str, name: str) -> str:
    """``pg_create_restore_point(name)``: a named target for recovery (recovery_target_name); returns its LSN."""
    if not name or len(name) >= 64:
        raise ConfigurationError("a restore point name must have 1 to 63 characters")
    row = _on_server(conninfo, lambda conn: _restore_point(conn, conninfo, name))
    return str(row[0])


def _restore_point(conn: psycopg.Connection[Any], conninfo: str, name: str) -> tuple[Any, ...]:
    """A restore point is WAL written by a primary: a standby (in recovery) cannot create one."""
    if _one(conn, "select pg_is_in_recovery()", ())[0]:
        raise ConfigurationError(
            f"{pgtools.describe(conninfo)} is a standby (in recovery): create the restore point on the primary, "
            "whose WAL the standby replays"
        )
    return _one(conn, "select pg_create_restore_point(%s)::text", (name,))


_T = TypeVar("_T")


def _one(conn: psycopg.Connection[Any], sql: str, params: Iterable[object]) -> tuple[Any, ...]:
    row = conn.execute(sql, tuple(params)).fetchone()
    if row is None:
        raise DatabaseError(f"{sql.split()[1]} returned no row")
    return tuple(row)


def _on_server(conninfo: str, ask: Callable[[psycopg.Connection[Any]], _T]) -> _T:
    """``ask(conn)`` on a fresh connection (`connect`); a failed query is a one-line `DatabaseError` naming the
    server."""
    import psycopg

    with connect(conninfo) as conn:
        try:
            return ask(conn)
        except psycopg.Error as e:
            raise DatabaseError(f"{pgtools.describe(conninfo)}: {first_line(e)}") from None


__all__ = ["ArchiverStatus", "archiver_status", "create_restore_point", "read_stat_archiver"]
