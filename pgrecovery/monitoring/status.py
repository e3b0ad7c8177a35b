"""Monitoring: a status table of runs, health checks with Nagios exit codes, and Prometheus metrics.

>>> table = StatusTable("host=mon dbname=ops")                                   # doctest: +SKIP
>>> with recording(table, "logical") as run:                                     # doctest: +SKIP
...     run.note_backup(LogicalBackup(dbname="host=db1 dbname=shop").run(repo), repo)
>>> report = check(repo, dbname="host=db1", status_table=table)                  # doctest: +SKIP
>>> print(report.text()); raise SystemExit(report.exit_code)                     # doctest: +SKIP
>>> write_textfile("/var/lib/node_exporter/pgrecovery.prom", metrics(repo))      # doctest: +SKIP

Sources: the repository's catalog (complete backups and their finish times, the newest archived WAL object), the
database's ``pg_stat_archiver`` and ``pg_wal/archive_status`` (through ``pg_ls_archive_statusdir()``), and the
status table (the latest run of each kind). See docs/monitoring.md.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Literal

import attrs

from .. import pgtools
from .._redact import redact
from ..errors import ConfigurationError, DatabaseError, PgRecoveryError

if TYPE_CHECKING:
    import psycopg

    from ..manifest import BackupManifest
    from ..repository import Repository

log = logging.getLogger(__package__)  # one logger per area, whichever module of it logs

DEFAULT_STATUS_TABLE: Final = "pgrecovery_backup_status"
BACKUP_KINDS: Final = ("logical", "globals", "cluster", "base")
_ERROR_LIMIT: Final = 4000  # characters of error text kept in the status table
_PART: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_KIND: Final = re.compile(r"[a-z][a-z0-9_-]{0,31}")


# -- durations ---------------------------------------------------------------------------------------------------

_UNITS: Final = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION: Final = re.compile(r"(\d+(?:\.\d+)?)\s*(s|min|m|h|d|w)")


def parse_duration(text: str) -> timedelta | None:
    """``"25h"``, ``"90m"``, ``"1d12h"``, ``"30s"``, ``"2w"`` as a timedelta; ``"off"`` (or ``"none"``) is None."""
    t = text.strip().lower().replace(" ", "")
    if t in ("off", "none", "no", "disabled"):
        return None
    if not t or _DURATION.sub("", t):
        raise ConfigurationError(
            f"bad duration {text!r}: write a number with a unit (s, m, h, d, w), e.g. 25h, 90m or 1d12h, or 'off'"
        )
    return timedelta(seconds=sum(float(n) * _UNITS[u] for n, u in _DURATION.findall(t)))


def human_duration(value: timedelta | float) -> str:
    """``3 h 2 min``, ``8 d 1 h``, ``45 s``: two units at most."""
    seconds = round(value.total_seconds() if isinstance(value, timedelta) else value)
    if seconds < 0:
        return "-" + human_duration(-seconds)
    units = (("d", 86400), ("h", 3600), ("min", 60), ("s", 1))
    for i, (unit, size) in enumerate(units[:-1]):
        if seconds >= size:
            next_unit, next_size = units[i + 1]
            rest = (seconds % size) // next_size
            return f"{seconds // size} {unit}" + (f" {rest} {next_unit}" if rest else "")
    return f"{seconds} s"


# -- states and results ------------------------------------------------------------------------------------------


class CheckState(enum.IntEnum):
    """A check's outcome; the value is the Nagios exit code."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3

    @property
    def severity(self) -> int:
        """Order for "worst of": OK < WARNING < UNKNOWN < CRITICAL."""
        return {0: 0, 1: 1, 3: 2, 2: 3}[int(self)]


def _seconds(value: timedelta | None) -> float | None:
    return None if value is None else value.total_seconds()


@attrs.frozen(kw_only=True)
class CheckResult:
    """One check: its name (``logical-backup``, ``wal-lag``, ...), state, a one-line detail, and the measured
    ``value`` with the thresholds it was compared with (``unit`` says what they count)."""

    name: str
    state: CheckState
    detail: str
    value: float | None = None
    warning: float | None = None
    critical: float | None = None
    unit: str | None = None

    @property
    def line(self) -> str:
        return f"{self.state.name} - {self.name}: {self.detail}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.name,
            "state": self.state.name,
            "detail": self.detail,
            "value": self.value,
            "warning": self.warning,
            "critical": self.critical,
            "unit": self.unit,
        }


def _results(value: Iterable[CheckResult]) -> tuple[CheckResult, ...]:
    return tuple(value)


@attrs.frozen(kw_only=True)
class HealthReport:
    """Every check's result. ``state`` is the worst of them (CRITICAL > UNKNOWN > WARNING > OK); ``exit_code`` is
    its Nagios code (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN)."""

    checks: tuple[CheckResult, ...] = attrs.field(converter=_results)
    checked_at: datetime
    repository: str | None = None
    database: str | None = None
    status_table: str | None = None

    @property
    def state(self) -> CheckState:
        if not self.checks:
            return CheckState.UNKNOWN
        return max((c.state for c in self.checks), key=lambda s: s.severity)

    @property
    def exit_code(self) -> int:
        return int(self.state)

    @property
    def summary(self) -> str:
        if not self.checks:
            return "UNKNOWN - pgrecovery: no check enabled"
        counts = {s: sum(1 for c in self.checks if c.state is s) for s in CheckState}
        parts = [f"{n} {s.name}" for s in sorted(CheckState, key=lambda s: -s.severity) if (n := counts[s])]
        return f"{self.state.name} - pgrecovery: {len(self.checks)} check(s): {', '.join(parts)}"

    def lines(self) -> list[str]:
        return [*(c.line for c in self.checks), self.summary]

    def text(self) -> str:
        return "\n".join(self.lines())

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.name,
            "exit_code": self.exit_code,
            "summary": self.summary,
            "checked_at": self.checked_at.isoformat(),
            "sources": {
                "repository": self.repository,
                "database": self.database,
                "status_table": self.status_table,
            },
            "checks": [c.to_dict() for c in self.checks],
        }


# -- thresholds --------------------------------------------------------------------------------------------------


def _limit_order(instance: AgeLimit | CountLimit, _attr: Any, _value: Any) -> None:
    w, c = instance.warning, instance.critical
    if w is not None and c is not None and w > c:  # type: ignore[operator]
        raise ConfigurationError(f"warning threshold ({w}) is above the critical one ({c}): swap them")


@attrs.frozen
class AgeLimit:
    """Warning and critical ages; None disables that level (both None: the check is off)."""

    warning: timedelta | None = None
    critical: timedelta | None = attrs.field(default=None, validator=_limit_order)

    @property
    def enabled(self) -> bool:
        return self.warning is not None or self.critical is not None

    def state(self, age: timedelta) -> CheckState:
        if self.critical is not None and age >= self.critical:
            return CheckState.CRITICAL
        if self.warning is not None and age >= self.warning:
            return CheckState.WARNING
        return CheckState.OK

    def describe(self) -> str:
        levels = (("warning", self.warning), ("critical", self.critical))
        return ", ".join(f"{name} after {human_duration(v)}" for name, v in levels if v is not None)


@attrs.frozen
class CountLimit:
    """Warning and critical counts; None disables that level."""

    warning: int | None = None
    critical: int | None = attrs.field(default=None, validator=_limit_order)

    def state(self, count: int) -> CheckState:
        if self.critical is not None and count >= self.critical:
            return CheckState.CRITICAL
        if self.warning is not None and count >= self.warning:
            return CheckState.WARNING
        return CheckState.OK


def _default_backups() -> dict[str, AgeLimit]:
    return {
        "logical": AgeLimit(timedelta(hours=24), timedelta(hours=25)),
        "base": AgeLimit(timedelta(days=7), timedelta(days=8)),
    }


def _backup_limits(value: Mapping[str, AgeLimit]) -> dict[str, AgeLimit]:
    out = {}
    for kind, limit in value.items():
        if kind not in BACKUP_KINDS:
            raise ConfigurationError(f"unknown backup kind {kind!r}: choose from {', '.join(BACKUP_KINDS)}")
        if limit.enabled:
            out[kind] = limit
    return out


@attrs.frozen(kw_only=True)
class Thresholds:
    """What `check` (and the SQL function) call late or backlogged. Defaults suit daily logical backups, weekly
    base backups and continuous WAL archiving.

    ``backups``: age of the newest complete backup of each kind (a kind left out, or with both levels None, is
    not checked). ``wal``: run the WAL checks at all. ``wal_lag``: how long the oldest finished segment has been
    waiting to be archived (or, from the repository alone, the age of the newest archived object). ``ready``:
    ``.ready`` files waiting. ``failing_critical``: archiving failing for this long is CRITICAL, less is WARNING.
    """

    backups: dict[str, AgeLimit] = attrs.field(factory=_default_backups, converter=_backup_limits)
    wal: bool = True
    wal_lag: AgeLimit = AgeLimit(timedelta(minutes=15), timedelta(hours=1))
    ready: CountLimit = CountLimit(10, 50)
    failing_critical: timedelta | None = timedelta(minutes=10)

    def with_backup(self, kind: str, limit: AgeLimit | None) -> Thresholds:
        """A copy with ``kind``'s age limit replaced (None: that kind is not checked)."""
        backups = dict(self.backups)
        backups.pop(kind, None)
        if limit is not None:
            backups[kind] = limit
        return attrs.evolve(self, backups=backups)


# -- the status table --------------------------------------------------------------------------------------------


def _table_name(_instance: object, _attr: object, value: str) -> None:
    parts = value.split(".")
    if len(parts) > 2 or not all(_PART.fullmatch(p) for p in parts):
        raise ConfigurationError(
            f"status table name {value!r} is not valid: use lowercase letters, digits and _ (starting with a letter "
            "or _), at most 63 characters, optionally schema-qualified (schema.table)"
        )


def _kind(_instance: object, _attr: object, value: str) -> None:
    if not _KIND.fullmatch(value):
        raise ConfigurationError(
            f"run kind {value!r} is not valid: use a short lowercase word such as logical, base, wal or verify"
        )


def _redact_path(value: str | None) -> str | None:
    if value is None:
        return None
    from .._redact import redact_url

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

        try:
            with psycopg.connect(self.conninfo, connect_timeout=self.connect_timeout, autocommit=True) as conn:
                yield conn
        except psycopg.errors.UndefinedTable:
            raise _MissingTable(
                f"status table {self.where} does not exist: record a run first, or create it (StatusTable.ensure(), "
                "CLI `pgrecovery check --install-sql`)"
            ) from None
        except psycopg.Error as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DatabaseError(f"cannot {what} status table {self.where}: {redact(first)}") from None

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
        from ._sql import function_sql

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


# -- facts gathered from the sources -----------------------------------------------------------------------------


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
        from .. import _walnames

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
        with psycopg.connect(dbname, connect_timeout=15, autocommit=True) as conn:
            row = conn.execute(
                "select current_setting('archive_mode'), pg_is_in_recovery(), a.archived_count, "
                "a.last_archived_wal, a.last_archived_time, a.failed_count, a.last_failed_wal, a.last_failed_time, "
                "case when pg_is_in_recovery() then null else pg_walfile_name(pg_current_wal_lsn()) end, "
                "(select setting::bigint from pg_settings where name = 'wal_segment_size') "
                "from pg_stat_archiver a"
            ).fetchone()
            assert row is not None
            ready = oldest = error = None
            try:
                counted = conn.execute(
                    "select count(*), min(modification) from pg_ls_archive_statusdir() where name like '%.ready'"
                ).fetchone()
                assert counted is not None
                ready, oldest = int(counted[0]), counted[1]
            except (psycopg.errors.InsufficientPrivilege, psycopg.errors.UndefinedFunction) as e:
                denied = isinstance(e, psycopg.errors.InsufficientPrivilege)
                error = "grant pg_monitor to this role" if denied else str(e).strip().splitlines()[0]
    except psycopg.Error as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DatabaseError(
            f"cannot read the archiver's state from {pgtools.describe(dbname)}: {redact(first)}"
        ) from None
    return _Server(
        archive_mode=str(row[0]),
        in_recovery=bool(row[1]),
        archived_count=int(row[2]),
        last_archived_wal=row[3],
        last_archived_time=row[4],
        failed_count=int(row[5]),
        last_failed_wal=row[6],
        last_failed_time=row[7],
        current_wal=row[8],
        segment_size=int(row[9] or 16 << 20),
        ready_count=ready,
        oldest_ready=oldest,
        ready_error=error,
    )


def _newest_wal(repo: Repository) -> tuple[str, datetime] | None:
    """The newest archived WAL segment (highest timeline, then name) and when it was stored."""
    from .. import _walnames
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


# -- checks ------------------------------------------------------------------------------------------------------


def _unknown(name: str, error: BaseException) -> CheckResult:
    return CheckResult(name=name, state=CheckState.UNKNOWN, detail=f"cannot check: {redact(str(error))}")


def _age_result(
    name: str, what: str, limit: AgeLimit, newest: tuple[str, datetime] | None, where: str, now: datetime
) -> CheckResult:
    if newest is None:
        state = CheckState.CRITICAL if limit.critical is not None else CheckState.WARNING
        return CheckResult(name=name, state=state, detail=f"no {what} in {where}")
    label, when = newest
    age = max(now - when, timedelta(0))
    return CheckResult(
        name=name,
        state=limit.state(age),
        detail=f"newest {label} finished {human_duration(age)} ago ({limit.describe()})",
        value=age.total_seconds(),
        warning=_seconds(limit.warning),
        critical=_seconds(limit.critical),
        unit="seconds",
    )


def _backup_checks(
    repo: Repository | None, status: StatusTable | None, thresholds: Thresholds, now: datetime
) -> list[CheckResult]:
    if not thresholds.backups:
        return []
    names = [f"{kind}-backup" for kind in thresholds.backups]
    newest: dict[str, tuple[str, datetime]] = {}
    try:
        if repo is not None:
            where = repo.display_url
            for m in repo.backups():
                if m.kind in thresholds.backups and (m.kind not in newest or m.finished_at > newest[m.kind][1]):
                    newest[m.kind] = (f"backup {m.id}", m.finished_at)
        elif status is not None:
            where = f"status table {status.where}"
            for kind, rec in status.latest("success").items():
                if kind in thresholds.backups and rec.created_at is not None:
                    newest[kind] = (f"successful run{f' ({rec.backup_id})' if rec.backup_id else ''}", rec.created_at)
        else:
            return [
                CheckResult(name=n, state=CheckState.UNKNOWN, detail="no repository (nor status table) to look in")
                for n in names
            ]
    except PgRecoveryError as e:
        return [_unknown(n, e) for n in names]
    return [
        _age_result(f"{kind}-backup", f"complete {kind} backup", limit, newest.get(kind), where, now)
        for kind, limit in thresholds.backups.items()
    ]


def _wal_checks_server(server: _Server, thresholds: Thresholds, now: datetime) -> list[CheckResult]:
    if not server.archiving:
        if server.in_recovery and server.archive_mode == "on":
            return [CheckResult(name="wal-archiving", state=CheckState.OK, detail="standby: the primary archives WAL")]
        return [
            CheckResult(
                name="wal-archiving",
                state=CheckState.CRITICAL,
                detail=f"archive_mode is {server.archive_mode} on the server: no WAL is archived (turn it on, or "
                "disable the WAL checks)",
            )
        ]
    out = []
    lag, how = server.lag(now)
    limit = thresholds.wal_lag
    if lag is None:
        out.append(CheckResult(name="wal-lag", state=CheckState.UNKNOWN, detail=how))
    elif limit.enabled:
        out.append(
            CheckResult(
                name="wal-lag",
                state=limit.state(lag),
                detail=f"{how} ({limit.describe()})" if limit.enabled else how,
                value=lag.total_seconds(),
                warning=_seconds(limit.warning),
                critical=_seconds(limit.critical),
                unit="seconds",
            )
        )
    if server.ready_count is None:
        out.append(
            CheckResult(
                name="wal-ready", state=CheckState.UNKNOWN, detail=f"cannot count .ready files: {server.ready_error}"
            )
        )
    else:
        ready = thresholds.ready
        out.append(
            CheckResult(
                name="wal-ready",
                state=ready.state(server.ready_count),
                detail=f"{server.ready_count} segment(s) waiting to be archived "
                f"(warning at {ready.warning}, critical at {ready.critical})",
                value=float(server.ready_count),
                warning=None if ready.warning is None else float(ready.warning),
                critical=None if ready.critical is None else float(ready.critical),
                unit="files",
            )
        )
    out.append(_failures(server, thresholds, now))
    return out


def _failures(server: _Server, thresholds: Thresholds, now: datetime) -> CheckResult:
    if not server.failing:
        total = f"{server.failed_count} failed attempt(s) in total" if server.failed_count else "no failed attempt"
        return CheckResult(
            name="wal-failures",
            state=CheckState.OK,
            detail=f"{total}; the latest attempt succeeded" if server.last_archived_time else total,
            value=float(server.failed_count),
            unit="failures",
        )
    since = server.oldest_ready or server.last_archived_time
    crit = thresholds.failing_critical
    failing_for = None if since is None else max(now - since, timedelta(0))
    if crit is None:
        state = CheckState.WARNING
    elif failing_for is None or failing_for >= crit:
        state = CheckState.CRITICAL
    else:
        state = CheckState.WARNING
    assert server.last_failed_time is not None
    ago = human_duration(max(now - server.last_failed_time, timedelta(0)))
    duration = "never archived successfully" if failing_for is None else f"failing for {human_duration(failing_for)}"
    limit = "" if crit is None else f" (critical after {human_duration(crit)})"
    return CheckResult(
        name="wal-failures",
        state=state,
        detail=f"archive_command is failing: {server.failed_count} failed attempt(s), the latest on "
        f"{server.last_failed_wal} {ago} ago; {duration}{limit}; see the server log",
        value=float(server.failed_count),
        critical=_seconds(crit),
        unit="failures",
    )


def _wal_check_repository(repo: Repository, thresholds: Thresholds, now: datetime) -> CheckResult:
    limit = thresholds.wal_lag
    newest = _newest_wal(repo)
    if newest is None:
        state = CheckState.CRITICAL if limit.critical is not None else CheckState.WARNING
        return CheckResult(name="wal-lag", state=state, detail=f"no WAL archived in {repo.display_url}")
    name, when = newest
    return attrs.evolve(
        _age_result("wal-lag", "WAL", limit, (f"WAL segment {name}", when), repo.display_url, now),
        detail=f"newest WAL segment {name} stored {human_duration(max(now - when, timedelta(0)))} ago "
        f"({limit.describe()})",
    )


def _run_check(status: StatusTable) -> CheckResult:
    latest = status.latest()
    if not latest:
        return CheckResult(name="last-run", state=CheckState.OK, detail=f"no run recorded yet in {status.where}")
    failed = [r for r in latest.values() if not r.ok]
    if not failed:
        return CheckResult(
            name="last-run",
            state=CheckState.OK,
            detail=f"the latest run of each kind succeeded ({', '.join(sorted(latest))})",
        )
    state = CheckState.CRITICAL if any(r.kind == "verify" for r in failed) else CheckState.WARNING
    parts = []
    for r in sorted(failed, key=lambda r: r.kind):
        when = r.created_at.isoformat(timespec="seconds") if r.created_at else "?"
        parts.append(f"{r.kind} failed at {when}" + (f": {r.error.splitlines()[0]}" if r.error else ""))
    return CheckResult(name="last-run", state=state, detail="; ".join(parts), value=float(len(failed)), unit="runs")


def check(
    repo: Repository | None,
    *,
    dbname: str | None = None,
    status_table: StatusTable | None = None,
    thresholds: Thresholds | None = None,
    now: datetime | None = None,
) -> HealthReport:
    """Run every enabled check; a source that cannot be read makes its checks UNKNOWN, never raises.

    Backup ages come from the repository (or, with ``repo=None``, from the status table's successes). WAL checks
    use the database's archiver statistics when ``dbname`` is given (a libpq string; ``""`` means libpq's
    environment), else the newest WAL object in the repository. The status table adds ``last-run``.
    """
    th = thresholds or Thresholds()
    now = (now or datetime.now(UTC)).astimezone(UTC)
    results = _backup_checks(repo, status_table, th, now)
    if th.wal:
        if dbname is not None:
            try:
                results += _wal_checks_server(_server(dbname), th, now)
            except PgRecoveryError as e:
                results += [_unknown(n, e) for n in ("wal-lag", "wal-ready", "wal-failures")]
        elif repo is not None and th.wal_lag.enabled:
            try:
                results.append(_wal_check_repository(repo, th, now))
            except PgRecoveryError as e:
                results.append(_unknown("wal-lag", e))
    if status_table is not None:
        try:
            results.append(_run_check(status_table))
        except PgRecoveryError as e:
            results.append(_unknown("last-run", e))
    return HealthReport(
        checks=results,
        checked_at=now,
        repository=repo.display_url if repo is not None else None,
        database=pgtools.describe(dbname) if dbname is not None else None,
        status_table=status_table.where if status_table is not None else None,
    )


# -- metrics -----------------------------------------------------------------------------------------------------

# Every metric family: type and help text (names get the ``pgrecovery_`` prefix). docs/monitoring.md lists them.
_METRICS: Final[dict[str, tuple[str, str]]] = {
    "backups": ("gauge", "Complete backups in the repository."),
    "backup_stored_bytes": ("gauge", "Bytes stored by the complete backups of this kind."),
    "backup_last_success_timestamp_seconds": ("gauge", "When the newest complete backup finished (Unix time)."),
    "backup_last_duration_seconds": ("gauge", "How long the newest complete backup took."),
    "backup_last_stored_bytes": ("gauge", "Bytes stored for the newest complete backup (after compression)."),
    "backup_last_raw_bytes": ("gauge", "Bytes of the newest complete backup before compression."),
    "wal_newest_object_timestamp_seconds": ("gauge", "When the newest WAL segment in the repository was stored."),
    "wal_archive_lag_seconds": (
        "gauge",
        "How long the oldest finished WAL segment has waited to be archived (0: nothing waits); without a "
        "database, the age of the newest WAL segment in the repository.",
    ),
    "wal_archiving": ("gauge", "1 when this server archives WAL (archive_mode), else 0."),
    "wal_ready_files": ("gauge", "WAL segments waiting to be archived (.ready files)."),
    "wal_archived_total": ("counter", "Segments archived (pg_stat_archiver.archived_count)."),
    "wal_archive_failures_total": ("counter", "Failed archive_command attempts (pg_stat_archiver.failed_count)."),
    "wal_archive_failing": ("gauge", "1 when the latest archive attempt failed, else 0."),
    "wal_last_archived_timestamp_seconds": ("gauge", "When the server last archived a segment (Unix time)."),
    "run_last_status": ("gauge", "1 when the latest recorded run of the kind succeeded, 0 when it failed."),
    "run_last_timestamp_seconds": ("gauge", "When the latest run of the kind was recorded (Unix time)."),
    "run_last_success_timestamp_seconds": ("gauge", "When the latest successful run was recorded (Unix time)."),
    "run_last_duration_seconds": ("gauge", "How long the latest run of the kind took."),
    "verify_last_result": ("gauge", "1 when the latest recorded verification passed, 0 when it failed."),
    "source_up": ("gauge", "1 when the source could be read for these metrics, else 0."),
    "metrics_timestamp_seconds": ("gauge", "When these metrics were gathered (Unix time)."),
}


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


class _Exposition:
    """Metric families in the Prometheus text format (HELP and TYPE once per family, its samples after)."""

    def __init__(self) -> None:
        self._samples: dict[str, list[str]] = {}

    def add(self, name: str, value: float, **labels: str) -> None:
        full = f"pgrecovery_{name}"
        text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
        sample = f"{full}{{{text}}} {_number(value)}" if text else f"{full} {_number(value)}"
        self._samples.setdefault(name, []).append(sample)

    def render(self) -> str:
        out = []
        for name, samples in self._samples.items():
            mtype, help_text = _METRICS[name]
            out += [f"# HELP pgrecovery_{name} {help_text}", f"# TYPE pgrecovery_{name} {mtype}", *samples]
        return "\n".join(out) + "\n"


def _ts(value: datetime) -> float:
    return round(value.timestamp(), 3)


def _backup_metrics(e: _Exposition, repo: Repository, now: datetime, with_wal: bool) -> None:
    by_kind: dict[str, list[BackupManifest]] = {k: [] for k in BACKUP_KINDS}
    for m in repo.backups():
        by_kind.setdefault(m.kind, []).append(m)
    r = repo.display_url
    for kind, found in by_kind.items():
        e.add("backups", len(found), kind=kind, repository=r)
        e.add("backup_stored_bytes", sum(m.size for m in found), kind=kind, repository=r)
    for kind, found in by_kind.items():
        if found:
            m = max(found, key=lambda x: (x.finished_at, x.id))
            e.add("backup_last_success_timestamp_seconds", _ts(m.finished_at), kind=kind, repository=r)
            e.add("backup_last_duration_seconds", round(m.duration, 3), kind=kind, repository=r)
            e.add("backup_last_stored_bytes", m.size, kind=kind, repository=r)
            if m.raw_size is not None:
                e.add("backup_last_raw_bytes", m.raw_size, kind=kind, repository=r)
    newest = _newest_wal(repo) if with_wal else None
    if newest is not None:
        e.add("wal_newest_object_timestamp_seconds", _ts(newest[1]), repository=r)
        e.add("wal_archive_lag_seconds", round(max(now - newest[1], timedelta(0)).total_seconds(), 3), repository=r)


def _server_metrics(e: _Exposition, server: _Server, now: datetime, labels: dict[str, str]) -> None:
    e.add("wal_archiving", server.archiving)
    lag, _ = server.lag(now)
    if lag is not None:
        e.add("wal_archive_lag_seconds", round(lag.total_seconds(), 3), **labels)
    if server.ready_count is not None:
        e.add("wal_ready_files", server.ready_count)
    e.add("wal_archived_total", server.archived_count)
    e.add("wal_archive_failures_total", server.failed_count)
    e.add("wal_archive_failing", server.failing)
    if server.last_archived_time is not None:
        e.add("wal_last_archived_timestamp_seconds", _ts(server.last_archived_time))


def _status_metrics(e: _Exposition, status: StatusTable) -> None:
    latest = status.latest()
    for kind, rec in sorted(latest.items()):
        e.add("run_last_status", rec.ok, kind=kind)
        if rec.created_at is not None:
            e.add("run_last_timestamp_seconds", _ts(rec.created_at), kind=kind)
        if rec.duration_seconds is not None:
            e.add("run_last_duration_seconds", rec.duration_seconds, kind=kind)
    for kind, rec in sorted(status.latest("success").items()):
        if rec.created_at is not None:
            e.add("run_last_success_timestamp_seconds", _ts(rec.created_at), kind=kind)
    if "verify" in latest:
        e.add("verify_last_result", latest["verify"].ok)


@attrs.frozen(kw_only=True)
class Metrics:
    """`collect_metrics`' result: the exposition text and whether each source could be read."""

    text: str
    sources_up: dict[str, bool]

    @property
    def ok(self) -> bool:
        return all(self.sources_up.values())


def metrics(
    repo: Repository | None,
    *,
    dbname: str | None = None,
    status_table: StatusTable | None = None,
    now: datetime | None = None,
) -> str:
    """Everything known, in the Prometheus text exposition format. A source that cannot be read is reported by
    ``pgrecovery_source_up{source="..."} 0`` (and a warning in the log), never by an exception."""
    return collect_metrics(repo, dbname=dbname, status_table=status_table, now=now).text


def collect_metrics(
    repo: Repository | None,
    *,
    dbname: str | None = None,
    status_table: StatusTable | None = None,
    now: datetime | None = None,
) -> Metrics:
    """`metrics`, with which sources could be read."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    e = _Exposition()
    up: dict[str, bool] = {}
    steps: list[tuple[str, Any]] = []
    if repo is not None:
        steps.append(("repository", lambda: _backup_metrics(e, repo, now, with_wal=dbname is None)))
    if dbname is not None:
        labels = {"repository": repo.display_url} if repo is not None else {}
        steps.append(("database", lambda: _server_metrics(e, _server(dbname), now, labels)))
    if status_table is not None:
        steps.append(("status_table", lambda: _status_metrics(e, status_table)))
    for source, step in steps:
        try:
            step()
            up[source] = True
        except PgRecoveryError as err:
            log.warning("metrics: cannot read the %s: %s", source.replace("_", " "), err)
            up[source] = False
    for source, ok in up.items():
        e.add("source_up", ok, source=source)
    e.add("metrics_timestamp_seconds", _ts(now))
    return Metrics(text=e.render(), sources_up=up)


def write_textfile(path: str | os.PathLike[str], text: str) -> None:
    """Replace ``path`` atomically (temporary file in the same directory, fsync, rename), mode 0644: a collector
    reading the directory (node exporter's textfile collector) never sees a half-written file."""
    target = os.path.abspath(os.fspath(path))
    directory, name = os.path.split(target)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    except OSError as e:
        raise ConfigurationError(f"cannot write {target}: {e.strerror or e}: check that {directory} exists") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise ConfigurationError(f"cannot write {target}: {e.strerror or e}") from None
    with contextlib.suppress(OSError):
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


# -- the in-database check function ------------------------------------------------------------------------------


def check_function_sql(table: str = DEFAULT_STATUS_TABLE, thresholds: Thresholds | None = None) -> str:
    """SQL creating ``pgrecovery_check(...)`` (in ``table``'s schema) that checks from inside the database.

    It returns rows ``("check", state, detail)`` from the status table (backup ages by recorded successes, the
    latest run of each kind) and this server's archiver (``pg_stat_archiver``, ``.ready`` files). Its parameters
    default to ``thresholds``; pass others by name: ``select * from pgrecovery_check(logical_critical => '2 days')``.
    A schema-qualified ``table`` gives a function with a fixed search_path; an unqualified one resolves through
    the caller's search_path (`StatusTable.install_check_function` always qualifies).
    """
    _table_name(None, None, table)
    schema, _, name = table.rpartition(".")
    from ._sql import function_sql

    return function_sql(schema or None, name, thresholds)


__all__ = [
    "BACKUP_KINDS",
    "DEFAULT_STATUS_TABLE",
    "AgeLimit",
    "CheckResult",
    "CheckState",
    "CountLimit",
    "HealthReport",
    "Metrics",
    "RunContext",
    "RunRecord",
    "StatusTable",
    "Thresholds",
    "check",
    "check_function_sql",
    "collect_metrics",
    "human_duration",
    "metrics",
    "parse_duration",
    "recording",
    "write_textfile",
]
