"""Rescuing rows and tables from the past without rewinding the live database.

A sandbox cluster is recovered from the repository to a target (a time, an xid, an LSN, a restore point), the
rows or the table are read from it, loaded into the live database, and the sandbox is removed:

>>> r = recover_rows(repo, RecoveryTarget.time("2026-03-15 14:29+00"), "select * from orders where id < 100",
...                  dbname="shop", into="host=db1 dbname=shop", table="public.orders")      # doctest: +SKIP
>>> r.selected, r.inserted, r.skipped                                                       # doctest: +SKIP
>>> recover_table(repo, RecoveryTarget.xid(123456, inclusive=False), "public.orders",
...               dbname="shop", into="host=db1 dbname=shop")                              # doctest: +SKIP

The sandbox stops *paused* at the target whenever it can (a paused standby answers read-only queries and never
starts a timeline of its own). Two cases promote it instead: a target of ``latest`` (recovery ends at the end of
the archive), and a target inside a transaction that holds ACCESS EXCLUSIVE locks (the DROP TABLE or TRUNCATE
being undone, not yet committed at the target), whose locks replay would hold forever while paused. Either way
it runs with ``archive_mode = off``, so nothing it does can reach the production archive; it records no incident
in the repository, and it is stopped and deleted afterwards whatever happens (an error, Ctrl-C).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

import attrs

from .. import pgtools
from ..cluster import LocalCluster
from ..errors import ConfigurationError, DatabaseError, RestoreError
from ..logical.backup import LogicalBackup
from ..logical.restore import LogicalRestore, require_dbname
from ..repository import Repository
from .sandbox import Sandbox, connect_utf8, sandbox_at, workdir_error
from .target import RecoveryTarget

log = logging.getLogger(__package__)  # one logger per area, whichever module of it logs

OnConflict = Literal["error", "skip"]

_MAX_IDENT = 63  # PostgreSQL's identifier length (NAMEDATALEN - 1)
_COPY_CHUNK = 1 << 20


def _split_table(table: str) -> tuple[str, str]:
    """``schema.name`` (or ``name``: schema ``public``), taken literally (no SQL quoting syntax)."""
    schema, _, name = table.strip().rpartition(".")
    if not name:
        raise ConfigurationError(f"table name {table!r} is empty: give NAME or SCHEMA.NAME")
    return schema or "public", name


def default_new_name(table: str, target: RecoveryTarget) -> str:
    """``<table>_at_<YYYYmmddHHMMSS>`` (UTC) for a time target, ``<table>_recovered`` for the others."""
    _, name = _split_table(table)
    if target.kind == "time" and target.value is not None:
        suffix = f"_at_{datetime.fromisoformat(target.value):%Y%m%d%H%M%S}"
    else:
        suffix = "_recovered"
    return name[: _MAX_IDENT - len(suffix)] + suffix


# -- results -------------------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class RowRescue:
    """What `recover_rows` read and did.

    ``rows`` are Python values (psycopg's conversions); ``text_rows`` the same values as PostgreSQL printed them
    (exact for every type, e.g. intervals with months; None is NULL): they are what was inserted, and what
    ``to_dict()`` (the CLI's ``--json``) shows.
    """

    target: str
    backup_id: str
    recovered_to: str | None  # the sandbox's replay position (LSN)
    last_transaction_time: str | None  # the last transaction replayed into the sandbox
    database: str  # the database in the sandbox
    query: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...] = attrs.field(repr=False)
    text_rows: tuple[tuple[str | None, ...], ...] = attrs.field(repr=False)
    into: str | None  # the live database (no secrets)
    table: str | None
    selected: int
    inserted: int
    skipped: int
    sandbox_seconds: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        out = attrs.asdict(self, filter=lambda a, _: a.name not in ("rows", "text_rows"))
        out["columns"] = list(self.columns)
        out["rows"] = [list(r) for r in self.text_rows]
        return out


@attrs.frozen(kw_only=True)
class TableRescue:
    """What `recover_table` loaded: ``table`` as it was at the target, now ``new_table`` in the live database."""

    target: str
    backup_id: str
    recovered_to: str | None
    last_transaction_time: str | None
    database: str
    table: str
    new_table: str
    into: str
    rows: int | None
    sandbox_seconds: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


# -- helpers -------------------------------------------------------------------------------------------------------


def _check_database(cluster: LocalCluster, dbname: str, target: str) -> None:
    """Refuse a database the sandbox does not have (it did not exist at the target), listing the ones it has."""
    with connect_utf8(cluster.conninfo(), "the sandbox", autocommit=True) as conn:
        names = [r[0] for r in conn.execute("select datname from pg_database where datallowconn order by 1")]
    if dbname not in names:
        raise ConfigurationError(
            f"database {dbname!r} did not exist at {target}: the sandbox has {', '.join(names)}; "
            "pass the database's name as it was then (dbname= / --sandbox-db)"
        )


def _live_columns(into: str, schema: str, name: str) -> dict[str, bool]:
    """The live table's columns (name -> whether it is a generated column, which cannot be inserted into)."""
    import psycopg
    from psycopg import sql

    with connect_utf8(into, "the live database", autocommit=True) as conn:
        try:
            qualified = sql.Identifier(schema, name).as_string(conn)
            row = conn.execute("select to_regclass(%s)::oid", (qualified,)).fetchone()
            if row is None or row[0] is None:
                raise ConfigurationError(
                    f"table {schema}.{name} does not exist in {pgtools.describe(into)}: rows go back into an "
                    "existing table; create it first, or load the whole table with recover_table (rescue table)"
                )
            cols = conn.execute(
                "select attname, attgenerated <> '' from pg_attribute "
                "where attrelid = %s and attnum > 0 and not attisdropped order by attnum",
                (row[0],),
            ).fetchall()
        except psycopg.Error as e:
            raise DatabaseError(f"cannot inspect {schema}.{name} in {pgtools.describe(into)}: {e}") from None
    return {str(c): bool(g) for c, g in cols}


def _copy_text(rows: Sequence[Sequence[bytes | None]]) -> Iterator[bytes]:
    """COPY's text format for rows of raw text values, in chunks."""
    buf: list[bytes] = []
    size = 0
    for row in rows:
        line = (
            b"\t".join(
                b"\\N"
                if v is None
                else v.replace(b"\\", b"\\\\").replace(b"\t", b"\\t").replace(b"\n", b"\\n").replace(b"\r", b"\\r")
                for v in row
            )
            + b"\n"
        )
        buf.append(line)
        size += len(line)
        if size >= _COPY_CHUNK:
            yield b"".join(buf)
            buf, size = [], 0
    if buf:
        yield b"".join(buf)


def _select(
    cluster: LocalCluster, dbname: str, query: str, params: Sequence[Any] | Mapping[str, Any] | None
) -> tuple[tuple[str, ...], list[tuple[Any, ...]], list[tuple[bytes | None, ...]]]:
    """Run ``query`` read-only in the sandbox: (column names, Python rows, raw text rows)."""
    import psycopg

    with connect_utf8(cluster.conninfo(dbname), f"database {dbname!r} in the sandbox") as conn:
        conn.read_only = True
        try:
            cur = conn.execute(query, params)
        except psycopg.Error as e:
            raise DatabaseError(f"the rescue query failed in the sandbox's database {dbname!r}: {e}") from None
        if cur.description is None:
            raise ConfigurationError("the rescue query returned no rows at all: it must be a SELECT (or VALUES, ...)")
        names = tuple(c.name for c in cur.description)
        rows = cur.fetchall()
        res = cur.pgresult
        assert res is not None
        raw = [tuple(res.get_value(i, j) for j in range(res.nfields)) for i in range(res.ntuples)]
        conn.rollback()
    return names, rows, raw


def _insert(
    into: str,
    schema: str,
    name: str,
    columns: Sequence[str],
    raw: Sequence[Sequence[bytes | None]],
    *,
    on_conflict: OnConflict,
) -> int:
    """Insert raw text rows into ``schema.name`` (columns by name) in one transaction; returns rows inserted."""
    import psycopg
    from psycopg import sql

    cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    table = sql.Identifier(schema, name)
    scratch = sql.Identifier("pgrecovery_rescued_rows")
    with connect_utf8(into, "the live database") as conn:
        try:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute(
                    sql.SQL("CREATE TEMPORARY TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA").format(
                        scratch, cols, table
                    )
                )
                with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(scratch, cols)) as copy:
                    for chunk in _copy_text(raw):
                        copy.write(chunk)
                insert = sql.SQL("INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM {}").format(
                    table, cols, cols, scratch
                )
                if on_conflict == "skip":
                    insert = sql.Composed([insert, sql.SQL(" ON CONFLICT DO NOTHING")])
                cur.execute(insert)
                return max(cur.rowcount, 0)
        except psycopg.errors.UniqueViolation as e:
            raise RestoreError(
                f"a rescued row already exists in {schema}.{name} ({e.diag.message_detail or e}): nothing was "
                "inserted; narrow the query, or skip such rows (on_conflict='skip', --on-conflict skip)"
            ) from None
        except psycopg.Error as e:
            raise DatabaseError(
                f"inserting the rescued rows into {schema}.{name} failed, nothing was inserted: {e}"
            ) from None


def _insert_columns(columns: Sequence[str], live: dict[str, bool], table: str) -> list[int]:
    """Which of the rescue query's ``columns`` are inserted into the live ``table`` (by position): all but the
    generated ones. A column named twice, or one the live table lacks, is refused."""
    dupes = sorted({c for c in columns if columns.count(c) > 1})
    if dupes:
        raise ConfigurationError(f"the rescue query returns column(s) {', '.join(dupes)} twice: alias them")
    unknown = [c for c in columns if c not in live]
    if unknown:
        raise ConfigurationError(
            f"column(s) {', '.join(unknown)} of the rescue query do not exist in {table}: select only "
            "the table's columns, or rename them with AS to the live table's column names"
        )
    return [i for i, c in enumerate(columns) if not live[c]]


# -- the rescues ---------------------------------------------------------------------------------------------------


def recover_rows(
    repo: Repository,
    target: RecoveryTarget,
    query: str,
    *,
    dbname: str,
    params: Sequence[Any] | Mapping[str, Any] | None = None,
    into: str | None = None,
    table: str | None = None,
    on_conflict: OnConflict = "error",
    backup_id: str | None = None,
    workdir: str | os.PathLike[str] | None = None,
    python: str | None = None,
    timeout: float = 600,
) -> RowRescue:
    """Run ``query`` (a SELECT, with psycopg ``params``) in database ``dbname`` as it was at ``target``, and
    return its rows; with ``into`` (the live database's conninfo) and ``table`` (``schema.name``), also insert
    them there, columns matched by name, in one transaction.

    ``on_conflict="error"`` (default) inserts nothing if any row hits a unique constraint; ``"skip"`` leaves such
    rows out (``ON CONFLICT DO NOTHING``) and counts them as skipped. Values travel as PostgreSQL's text, so they
    come back exactly. Generated columns are left out of the insert (the live table computes them); identity
    columns keep the rescued values. The rows are held in memory: for a whole table use `recover_table`.
    """
    t0 = time.monotonic()
    if on_conflict not in ("error", "skip"):
        raise ConfigurationError(f"on_conflict must be 'error' or 'skip', not {on_conflict!r}")
    if (into is None) != (table is None):
        raise ConfigurationError("inserting rescued rows needs both into= (the live database) and table=")
    live: dict[str, bool] = {}
    schema = name = ""
    if into is not None and table is not None:
        schema, name = _split_table(table)
        require_dbname(into, f"the rescued rows go into {schema}.{name} of one live database")
        live = _live_columns(into, schema, name)  # before the sandbox: a wrong table fails in a second
    sandbox = Sandbox(repo, target, backup_id=backup_id, workdir=workdir, python=python, timeout=timeout)
    t1 = time.monotonic()
    with sandbox as cluster:
        _check_database(cluster, dbname, target.describe())
        columns, rows, raw = _select(cluster, dbname, query, params)
        result = sandbox.result
    assert result is not None
    sandbox_seconds = time.monotonic() - t1  # restored, replayed, queried and removed
    inserted = 0
    if into is not None:
        keep = _insert_columns(columns, live, f"{schema}.{name}")
        if rows:
            inserted = _insert(
                into,
                schema,
                name,
                [columns[i] for i in keep],
                [tuple(r[i] for i in keep) for r in raw],
                on_conflict=on_conflict,
            )
    return RowRescue(
        target=target.describe(),
        backup_id=sandbox.backup_id,
        recovered_to=result.end_lsn,
        last_transaction_time=result.last_transaction_time,
        database=dbname,
        query=query,
        columns=columns,
        rows=tuple(tuple(r) for r in rows),
        text_rows=tuple(tuple(None if v is None else v.decode("utf-8", "replace") for v in r) for r in raw),
        into=pgtools.describe(into) if into is not None else None,
        table=f"{schema}.{name}" if into is not None else None,
        selected=len(rows),
        inserted=inserted,
        skipped=len(rows) - inserted if into is not None else 0,
        sandbox_seconds=round(sandbox_seconds, 3),
        seconds=round(time.monotonic() - t0, 3),
    )


def _refuse_existing(into: str, schema: str, name: str) -> None:
    """Before any work: the live database is reachable, has the schema, and has no table under the new name."""
    import psycopg
    from psycopg import sql

    with connect_utf8(into, "the live database", autocommit=True) as conn:
        try:
            has_schema = conn.execute("select 1 from pg_namespace where nspname = %s", (schema,)).fetchone()
            qualified = sql.Identifier(schema, name).as_string(conn)
            exists = conn.execute("select to_regclass(%s)", (qualified,)).fetchone()
        except psycopg.Error as e:
            raise DatabaseError(f"cannot inspect {pgtools.describe(into)}: {e}") from None
    if has_schema is None:
        raise ConfigurationError(
            f"schema {schema} does not exist in {pgtools.describe(into)}: create it first (CREATE SCHEMA {schema})"
        )
    if exists and exists[0] is not None:
        raise RestoreError(
            f"{schema}.{name} already exists in {pgtools.describe(into)} and is never replaced: choose another "
            "name (new_name= / --new-name), or drop or rename the existing table first"
        )


def recover_table(
    repo: Repository,
    target: RecoveryTarget,
    table: str,
    *,
    dbname: str,
    into: str,
    new_name: str | None = None,
    backup_id: str | None = None,
    workdir: str | os.PathLike[str] | None = None,
    python: str | None = None,
    timeout: float = 600,
) -> TableRescue:
    """Load ``table`` (``schema.name``) of database ``dbname`` as it was at ``target`` into the live database
    ``into`` under ``new_name`` (default `default_new_name`: ``<name>_at_<YYYYmmddHHMMSS>`` for a time target,
    else ``<name>_recovered``), in the same schema.

    An existing table of that name is never replaced (`RestoreError`, checked before the sandbox starts). The
    table is dumped from the sandbox into a temporary logical backup and restored with
    `LogicalRestore.restore_table`: under a new name it carries columns, data, constraints except foreign keys
    and indexes (loaded through a scratch database on the live server, so the user of ``into`` needs CREATEDB);
    under its own name (a dropped table, ``new_name`` = its name) everything that hangs off it.
    """
    t0 = time.monotonic()
    schema, name = _split_table(table)
    final = new_name or default_new_name(name, target)
    if not final or len(final) > _MAX_IDENT:
        raise ConfigurationError(f"new name {final!r} must be 1 to {_MAX_IDENT} characters long")
    require_dbname(into, f"{schema}.{name} is loaded into one live database")
    _refuse_existing(into, schema, final)
    sandbox = Sandbox(repo, target, backup_id=backup_id, workdir=workdir, python=python, timeout=timeout)
    try:
        scratch = tempfile.TemporaryDirectory(prefix="pgrecovery-rescue-", dir=sandbox.workdir)
    except OSError as e:
        raise workdir_error(sandbox.workdir, e) from None
    with scratch as tmp:
        dump_repo = Repository(f"file://{tmp}/dump")
        t1 = time.monotonic()
        with sandbox as cluster:
            _check_database(cluster, dbname, target.describe())
            source = cluster.conninfo(dbname)
            _check_table(source, schema, name, dbname, target.describe())
            pattern = _quoted(schema) + "." + _quoted(name)
            manifest = LogicalBackup(dbname=source, tables=[pattern], compression="none", workdir=tmp).run(dump_repo)
            result = sandbox.result
        sandbox_seconds = time.monotonic() - t1  # restored, replayed, dumped and removed
        restored = LogicalRestore(dump_repo, manifest.id, workdir=tmp).restore_table(
            name, into, schema=schema, new_name=final
        )
    assert result is not None
    return TableRescue(
        target=target.describe(),
        backup_id=sandbox.backup_id,
        recovered_to=result.end_lsn,
        last_transaction_time=result.last_transaction_time,
        database=dbname,
        table=f"{schema}.{name}",
        new_table=f"{schema}.{final}",
        into=pgtools.describe(into),
        rows=restored.rows,
        sandbox_seconds=round(sandbox_seconds, 3),
        seconds=round(time.monotonic() - t0, 3),
    )


def _check_table(source: str, schema: str, name: str, dbname: str, target: str) -> None:
    from psycopg import sql

    with connect_utf8(source, f"database {dbname!r} in the sandbox", autocommit=True) as conn:
        found = conn.execute("select to_regclass(%s)", (sql.Identifier(schema, name).as_string(conn),)).fetchone()
    if found is None or found[0] is None:
        raise RestoreError(
            f"table {schema}.{name} did not exist in database {dbname!r} at {target}: choose an earlier target, "
            "or check the name (schema.table, as it was then)"
        )


def _quoted(name: str) -> str:
    """A pg_dump pattern matching exactly ``name`` (quoted: no wildcards, case kept)."""
    return '"' + name.replace('"', '""') + '"'


__all__ = [
    "RowRescue",
    "Sandbox",
    "TableRescue",
    "default_new_name",
    "recover_rows",
    "recover_table",
    "sandbox_at",
]
