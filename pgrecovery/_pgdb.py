"""Small database helpers shared by backups, restores and verification (psycopg, one connection each)."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime

import attrs

from . import pgtools
from .errors import (
    ConfigurationError,
    DatabaseError,
    RestoreError,
)


@attrs.frozen
class ServerInfo:
    version_num: int
    version: str
    database: str

    @property
    def major(self) -> int:
        return self.version_num // 10000 if self.version_num >= 100000 else self.version_num // 100


def server_info(conninfo: str) -> ServerInfo:
    """Connect once to learn the server's version and the database name (and fail early and clearly)."""
    import psycopg

    try:
        with psycopg.connect(conninfo, connect_timeout=15, autocommit=True) as conn:
            row = conn.execute("select current_setting('server_version'), current_database()").fetchone()
            assert row is not None
            return ServerInfo(conn.info.server_version, str(row[0]), str(row[1]))
    except psycopg.Error as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DatabaseError(
            f"cannot connect to {pgtools.describe(conninfo)}: {first}; check --dbname / PGHOST, PGPORT, "
            "PGUSER, PGDATABASE"
        ) from None


def tool_major(text: str) -> int | None:
    m = re.search(r"\(PostgreSQL\)\s+(\d+)", text)
    return int(m.group(1)) if m else None


def now_utc() -> datetime:
    return datetime.now(UTC)


def database_exists(conninfo: str, name: str) -> bool:
    import psycopg

    with psycopg.connect(conninfo, autocommit=True) as conn:
        return conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone() is not None


def maintenance(conninfo: str) -> str:
    return pgtools.with_dbname(conninfo, "postgres")


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
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.Error as e:
        raise DatabaseError(f"cannot create database {name!r} on {pgtools.describe(admin)}: {e}") from None


def drop_database(conninfo: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(maintenance(conninfo), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
