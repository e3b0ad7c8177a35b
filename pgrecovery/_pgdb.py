"""Small database helpers shared by backups, restores and verification (psycopg, one connection each)."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import attrs

from . import pgtools
from .errors import (
    ConfigurationError,
    DatabaseError,
    RestoreError,
)

if TYPE_CHECKING:
    import psycopg


@attrs.frozen
class ServerInfo:
    version_num: int
    version: str
    database: str

    @property
    def major(self) -> int:
        return self.version_num // 10000 if self.version_num >= 100000 else self.version_num // 100


def connect(
    conninfo: str, *, autocommit: bool = True, timeout: int = 15, what: str = "connect to"
) -> psycopg.Connection[Any]:
    """The one way pgrecovery opens a database connection: autocommit by default, a connect timeout, and a failure
    to connect turned into a one-line, redacted `DatabaseError` that names the server (never psycopg's
    multi-line message with the conninfo in it). Use it as a context manager."""
    import psycopg

    try:
        return psycopg.connect(conninfo, autocommit=autocommit, connect_timeout=timeout)
    except psycopg.Error as e:
        raise DatabaseError(f"cannot {what} {pgtools.describe(conninfo)}: {first_line(e)}") from None


def first_line(e: BaseException) -> str:
    """The first line of a driver's error (psycopg's go on with DETAIL and HINT lines), or its class name."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def server_info(conninfo: str) -> ServerInfo:
    """Connect once to learn the server's version and the database name (and fail early and clearly)."""
    import psycopg

    hint = "check --dbname / PGHOST, PGPORT, PGUSER, PGDATABASE"
    try:
        with connect(conninfo) as conn:
            row = conn.execute("select current_setting('server_version'), current_database()").fetchone()
            assert row is not None
            return ServerInfo(conn.info.server_version, str(row[0]), str(row[1]))
    except DatabaseError as e:
        raise DatabaseError(f"{e}; {hint}") from None
    except psycopg.Error as e:
        raise DatabaseError(f"cannot connect to {pgtools.describe(conninfo)}: {first_line(e)}; {hint}") from None


def tool_major(text: str) -> int | None:
    m = re.search(r"\(PostgreSQL\)\s+(\d+)", text)
    return int(m.group(1)) if m else None


def now_utc() -> datetime:
    return datetime.now(UTC)


def database_exists(conninfo: str, name: str) -> bool:
    with connect(conninfo) as conn:
        return conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone() is not None


def maintenance(conninfo: str) -> str:
    return pgtools.with_dbname(conninfo, "postgres")


def refuse_standby(conninfo: str, instead: str) -> None:
    """A server in recovery takes no writes: say so in one line before anything is tried (a restore would
    otherwise fail half-way with the first statement pg_restore could not run). Only a server that says it is in
    recovery is refused: one that cannot be asked (the database does not exist yet, no access to ``postgres``)
    is left to the restore itself, which reports what went wrong."""
    row = None
    for candidate in (conninfo, maintenance(conninfo)):
        try:
            with connect(candidate, timeout=10) as conn:
                row = conn.execute("select pg_is_in_recovery()").fetchone()
            break
        except DatabaseError:
            continue
    if row is not None and row[0]:
        raise ConfigurationError(f"{pgtools.describe(conninfo)} is a standby (in recovery, read-only): {instead}")


def create_database(conninfo: str) -> None:
    """CREATE DATABASE named by ``conninfo``'s dbname, connecting to the same server's ``postgres`` database."""
    import psycopg
    from psycopg import sql

    name = pgtools.conninfo_dict(conninfo).get("dbname") or os.environ.get("PGDATABASE")
    if not name:
        raise ConfigurationError("create=True needs a database name in the connection string (dbname=...)")
    admin = maintenance(conninfo)
    try:
        if database_exists(admin, name):
            raise RestoreError(
                f"database {name!r} already exists: restore into it without create, or choose a new name"
            )
        with connect(admin, what=f"create database {name!r} on") as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.Error as e:
        raise DatabaseError(f"cannot create database {name!r} on {pgtools.describe(admin)}: {first_line(e)}") from None


def drop_database(conninfo: str, name: str) -> None:
    from psycopg import sql

    with connect(maintenance(conninfo)) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# Indexes PostgreSQL will not use: a failed or interrupted CREATE INDEX CONCURRENTLY, a partitioned index created
# ON ONLY its table whose partitions are not all attached, a DROP INDEX CONCURRENTLY under way. Temporary
# relations (other sessions' own) are left out: no restored copy has them.
_INVALID_INDEXES = (
    "select format('%I.%I', n.nspname, c.relname) from pg_index x join pg_class c on c.oid = x.indexrelid "
    "join pg_namespace n on n.oid = c.relnamespace "
    "where not x.indisvalid and c.relpersistence <> 't' and n.nspname <> 'pg_catalog' order by 1"
)


def invalid_indexes(conninfo: str) -> tuple[str, ...]:
    """The invalid indexes of one database, as ``schema.name`` (quoted where SQL needs it), sorted."""
    with connect(conninfo) as conn:
        return tuple(str(r[0]) for r in conn.execute(_INVALID_INDEXES).fetchall())


def invalid_indexes_by_database(
    conninfo: str, databases: Sequence[str] | None = None
) -> dict[str, tuple[str, ...]] | None:
    """`invalid_indexes` of ``databases`` (default: every database of the server that accepts connections), keyed
    by database name: the record a backup keeps so that a restore drill can tell faithful copies from damage.

    Best effort, as the record is: a database that cannot be read (a pg_hba rule, dropped meanwhile) is left out,
    and a server that cannot be asked at all gives None (not recorded).
    """
    import psycopg

    try:
        if databases is None:
            with connect(conninfo) as conn:
                rows = conn.execute("select datname from pg_database where datallowconn order by 1").fetchall()
            databases = [str(r[0]) for r in rows]
    except (psycopg.Error, DatabaseError):
        return None
    out: dict[str, tuple[str, ...]] = {}
    for name in databases:
        try:
            out[name] = invalid_indexes(pgtools.with_dbname(conninfo, name))
        except (psycopg.Error, DatabaseError):
            continue
    return out


def merge_index_records(
    *records: dict[str, tuple[str, ...]] | None,
) -> dict[str, tuple[str, ...]] | None:
    """Records taken at several moments of one backup, merged: an index invalid at any of them counts as invalid."""
    known = [r for r in records if r is not None]
    if not known:
        return None
    names = sorted({db for r in known for db in r})
    return {db: tuple(sorted({i for r in known for i in r.get(db, ())})) for db in names}
