"""The status table: one row per run (backups, verifications, policy jobs) in a monitoring database, and
`recording`, which times a block and records it there.

>>> table = StatusTable("host=mon dbname=ops")                                   # doctest: +SKIP
>>> with recording(table, "logical") as run:                                     # doctest: +SKIP
...     run.note_backup(LogicalBackup(dbname="host=db1 dbname=shop").run(repo), repo)
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, Literal

import attrs

from .. import pgtools
from .._pgdb import connect, first_line
from .._redact import redact, redact_url
from ..errors import ConfigurationError, DatabaseError, PgRecoveryError
from ._sql import DEFAULT_STATUS_TABLE, _table_name, check_function_sql, function_sql
from .thresholds import Thresholds

if TYPE_CHECKING:
    import psycopg

    from ..manifest import BackupManifest
    from ..repository import Repository

log = logging.getLogger(__package__)  # one logger per area, whichever module of it logs

_ERROR_LIMIT: Final = 4000  # characters of error text kept in the status table
_KIND: Final = re.compile(r"[a-z][a-z0-9_-]{0,31}")


def _kind(_instance: object, _attr: object, value: str) -> None:
    if not _KIND.fullmatch(value):
        raise ConfigurationError(
            f"run kind {value!r} is not valid: use a short lowercase word such as logical, base, wal or verify"
        )


def _redact_path(value: str | None) -> str | None:
    if value is None:
        return None
    return redact(redact_url(value))


def _redact_error(value: str | None) -> str | None:
    if value is None:
        return None
    text = redact(value)
    return text if len(text) <= _ERROR_LIMIT else text[: _ERROR_LIMIT - 3] + "..."


@attrs.frozen(kw_only=True)
class RunRecord:
    """One row of the status table. ``file_path`` and ``error`` are redacted on the way in (URL credentials,
    query strings, passwords): what is stored never carries a secret."""

    kind: str = attrs.field(validator=_kind)
    status: Literal["success", "failure"] = attrs.field(validator=attrs.validators.in_(("success", "failure")))
    backup_id: str | None = None
    file_path: str | None = attrs.field(default=None, converter=_redact_path)
    size_bytes: int | None = None
    duration_seconds: float | None = None
    error: str | None = attrs.field(default=None, converter=_redact_error)
    created_at: datetime | None = None
    id: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "success"

    def to_dict(self) -> dict[str, Any]:
        d = attrs.asdict(self)
        d["created_at"] = self.created_at.isoformat() if self.created_at else None
        return d


_COLUMNS: Final = "id, type, status, backup_id, file_path, size_bytes, duration_seconds, error_text, created_at"


def _row(row: tuple[Any, ...]) -> RunRecord:
    return RunRecord(
        id=row[0],
        kind=row[1],
        status=row[2],
        backup_id=row[3],
        file_path=row[4],
        size_bytes=row[5],
        duration_seconds=row[6],
        error=row[7],
        created_at=row[8],
    )


class _MissingTable(DatabaseError):
    pass


@attrs.frozen(repr=False)
class StatusTable:
    """The table of runs in a monitoring database (created if missing), reached with psycopg.

    ``name`` may be schema-qualified (the schema must exist); it is quoted as an identifier, never pasted.
    Each call opens its own short connection.
    """

    conninfo: str
    name: str = attrs.field(default=DEFAULT_STATUS_TABLE, validator=_table_name)
    connect_timeout: int = 10

    def __repr__(self) -> str:
        return f"StatusTable({self.name!r} on {pgtools.describe(self.conninfo)})"

    @property
    def where(self) -> str:
        """The table and its database, safe to show."""
        return f"{self.name} on {pgtools.describe(self.conninfo)}"

    @property
    def function_name(self) -> str:
        """The check function's name: ``pgrecovery_check``, in the table's schema."""
        schema, _, _ = self.name.rpartition(".")
        return f"{schema}.pgrecovery_check" if schema else "pgrecovery_check"

    # -- SQL building blocks -------------------------------------------------------------------------------
    def _ident(self) -> Any:
        from psycopg import sql

        return sql.Identifier(*self.name.split("."))

    def _index_ident(self) -> Any:
        from psycopg import sql

        return sql.Identifier(f"{self.name.rpartition('.')[2][:52]}_recent_idx")

    @contextlib.contextmanager
    def _connect(self, what: str) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
        import psycopg

        doing = f"{what} status table {self.name} on"  # a failure to connect reads as the other failures
        try:
            with connect(self.conninfo, timeout=self.connect_timeout, what=doing) as conn:
                yield conn
        except psycopg.errors.UndefinedTable:
            raise _MissingTable(
                f"status table {self.where} does not exist: record a run first, or create it (StatusTable.ensure(), "
                "CLI `pgrecovery check --install-sql`)"
            ) from None
        except psycopg.Error as e:
            raise DatabaseError(f"cannot {what} status table {self.where}: {redact(first_line(e))}") from None

    # -- writing -------------------------------------------------------------------------------------------
    def ddl(self) -> str:
        """The CREATE TABLE / CREATE INDEX statements `ensure` runs."""
        return str(self._ddl().as_string(None))

    def _ddl(self) -> Any:
        from psycopg import sql

        return sql.SQL(
            "CREATE TABLE IF NOT EXISTS {table} (\n"
            "    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,\n"
            "    type text NOT NULL,\n"
            "    status text NOT NULL CHECK (status IN ('success', 'failure')),\n"
            "    backup_id text,\n"
            "    file_path text,\n"
            "    size_bytes bigint,\n"
            "    duration_seconds double precision,\n"
            "    error_text text,\n"
            "    created_at timestamptz NOT NULL DEFAULT now()\n"
            ");\n"
            "CREATE INDEX IF NOT EXISTS {index} ON {table} (type, created_at DESC);\n"
        ).format(table=self._ident(), index=self._index_ident())

    def ensure(self) -> None:
        """Create the table and its index when missing (safe to run concurrently: an advisory lock serialises)."""
        from psycopg import sql

        with self._connect("create") as conn, conn.transaction():
            conn.execute("select pg_advisory_xact_lock(hashtext(%s))", (f"pgrecovery:{self.name}",))
            conn.execute(sql.SQL("set local client_min_messages = warning"))
            conn.execute(self._ddl())

    def record(self, run: RunRecord) -> RunRecord:
        """Insert ``run`` (creating the table the first time); returns it with ``id`` and ``created_at``."""
        from psycopg import sql

        query = sql.SQL(
            "INSERT INTO {} (type, status, backup_id, file_path, size_bytes, duration_seconds, error_text) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id, created_at"
        ).format(self._ident())
        params = (
            run.kind,
            run.status,
            run.backup_id,
            run.file_path,
            run.size_bytes,
            run.duration_seconds,
            run.error,
        )
        for attempt in (1, 2):
            try:
                with self._connect("write to") as conn:
                    row = conn.execute(query, params).fetchone()
                break
            except _MissingTable:
                if attempt == 2:
                    raise
                self.ensure()  # the first run creates the table
        assert row is not None
        return attrs.evolve(run, id=row[0], created_at=row[1])

    # -- reading -------------------------------------------------------------------------------------------
    def _query(self, query: Any, params: tuple[Any, ...] = ()) -> list[RunRecord]:
        with self._connect("read") as conn:
            return [_row(tuple(r)) for r in conn.execute(query, params).fetchall()]

    def last(self, kind: str, status: Literal["success", "failure"] | None = None) -> RunRecord | None:
        """The newest run of ``kind`` (with ``status`` when given), or None."""
        from psycopg import sql

        query = sql.SQL(
            f"SELECT {_COLUMNS} FROM {{}} WHERE type = %s AND (%s::text IS NULL OR status = %s) "
            "ORDER BY created_at DESC, id DESC LIMIT 1"
        ).format(self._ident())
        rows = self._query(query, (kind, status, status))
        return rows[0] if rows else None

    def latest(self, status: Literal["success", "failure"] | None = None) -> dict[str, RunRecord]:
        """The newest run of every kind recorded (with ``status`` when given), by kind."""
        from psycopg import sql

        query = sql.SQL(
            f"SELECT DISTINCT ON (type) {_COLUMNS} FROM {{}} WHERE (%s::text IS NULL OR status = %s) "
            "ORDER BY type, created_at DESC, id DESC"
        ).format(self._ident())
        return {r.kind: r for r in self._query(query, (status, status))}

    def recent(self, limit: int = 20) -> list[RunRecord]:
        """The newest ``limit`` runs, newest first."""
        from psycopg import sql

        query = sql.SQL(f"SELECT {_COLUMNS} FROM {{}} ORDER BY created_at DESC, id DESC LIMIT %s").format(self._ident())
        return self._query(query, (limit,))

    # -- the in-database check -----------------------------------------------------------------------------
    def check_function_sql(self, thresholds: Thresholds | None = None) -> str:
        """``CREATE OR REPLACE FUNCTION pgrecovery_check(...)`` for this table (see `check_function_sql`)."""
        return check_function_sql(self.name, thresholds)

    def install_check_function(self, thresholds: Thresholds | None = None) -> str:
        """Create the table if missing and (re)create ``pgrecovery_check()`` in the table's schema (which is
        resolved, so the function works whatever the caller's search_path); returns the function's name."""
        self.ensure()
        with self._connect("install the check function beside") as conn:
            row = conn.execute(
                "select n.nspname from pg_class c join pg_namespace n on n.oid = c.relnamespace "
                "where c.oid = to_regclass(%s)",
                (self._ident().as_string(conn),),
            ).fetchone()
            assert row is not None
            schema = str(row[0])
            with conn.transaction():
                conn.execute(function_sql(schema, self.name.rpartition(".")[2], thresholds).encode())
        from psycopg import sql

        return str(sql.Identifier(schema, "pgrecovery_check").as_string(None))


# -- recording runs ----------------------------------------------------------------------------------------------


@attrs.define(kw_only=True)
class RunContext:
    """What a `recording` block knows about its run; set fields (or call `note_backup`) inside the block."""

    kind: str
    backup_id: str | None = None
    file_path: str | None = None
    size_bytes: int | None = None
    record: RunRecord | None = None  # after the block: what was recorded

    def note_backup(self, manifest: BackupManifest, repo: Repository | None = None) -> None:
        """Take the backup id, stored size and location from a backup's manifest."""
        self.backup_id = manifest.id
        self.size_bytes = manifest.size
        if repo is not None:
            self.file_path = f"{repo.display_url.rstrip('/')}/backups/{manifest.id}"


@contextlib.contextmanager
def recording(
    table: StatusTable | None,
    kind: str,
    *,
    backup_id: str | None = None,
    file_path: str | None = None,
    size_bytes: int | None = None,
) -> Iterator[RunContext]:
    """Time the block and record it in ``table``: success, or failure with the (redacted) error, which is then
    raised again. A failure to record is logged, never raised: it must not turn a good backup into a failed one
    (the age checks notice a run that was not recorded). ``table=None`` only times and logs."""
    _kind(None, None, kind)
    run = RunContext(kind=kind, backup_id=backup_id, file_path=file_path, size_bytes=size_bytes)
    started = time.monotonic()
    error: BaseException | None = None
    try:
        yield run
    except BaseException as e:
        error = e
        raise
    finally:
        rec = RunRecord(
            kind=run.kind,
            status="success" if error is None else "failure",
            backup_id=run.backup_id,
            file_path=run.file_path,
            size_bytes=run.size_bytes,
            duration_seconds=round(time.monotonic() - started, 3),
            error=None if error is None else (str(error) or type(error).__name__),
        )
        fields = {f"run_{k}": v for k, v in rec.to_dict().items() if k not in ("id", "created_at") and v is not None}
        log.log(
            logging.INFO if rec.ok else logging.ERROR,
            "%s run %s in %.1f s",
            rec.kind,
            "succeeded" if rec.ok else "failed",
            rec.duration_seconds,
            extra=fields,
        )
        if table is not None:
            try:
                rec = table.record(rec)
            except PgRecoveryError as e:
                log.warning("could not record the %s run in the status table: %s", rec.kind, e)
        run.record = rec
