"""What a drill looks at in a restored copy: exact row counts, materialized views and large objects, invalid
indexes judged against the backup's record, and amcheck on B-tree indexes (skipped visibly where it is missing)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

from .. import pgtools
from .._pgdb import connect
from .report import Status

QUERIES = {
    "tables": (
        "select n.nspname, c.relname, c.relpersistence = 'u' from pg_class c "
        "join pg_namespace n on n.oid = c.relnamespace "
        "where c.relkind in ('r', 'p') and n.nspname not in ('pg_catalog', 'information_schema') "
        "and n.nspname not like 'pg_toast%' and c.relpersistence <> 't' order by 1, 2"
    ),
    "constraints": (
        "select count(*) from pg_constraint k join pg_namespace n on n.oid = k.connamespace "
        "where n.nspname not in ('pg_catalog', 'information_schema')"
    ),
    "matviews": "select count(*), count(*) filter (where not ispopulated) from pg_matviews",
    "large_objects": "select count(*) from pg_largeobject_metadata",
    # Every index with storage that PostgreSQL would use, by access method. Partitioned indexes (relkind 'I') have
    # no storage (their partitions' indexes are checked), invalid or unready ones are not in use, and temporary
    # ones belong to other sessions.
    "indexes": (
        "select format('%%I.%%I', n.nspname, c.relname), a.amname from pg_index x "
        "join pg_class c on c.oid = x.indexrelid join pg_namespace n on n.oid = c.relnamespace "
        "join pg_am a on a.oid = c.relam "
        "where c.relkind = 'i' and x.indisvalid and x.indisready and x.indislive and c.relpersistence <> 't' "
        "and (c.oid >= 16384 or not %s) order by 1"  # 16384: the first OID of objects not PostgreSQL's own
    ),
}


@attrs.frozen(kw_only=True)
class Counts:
    """What a drill counted in one database."""

    tables: dict[str, int]  # exact row counts by "schema.table"
    unlogged: frozenset[str]  # the unlogged tables among them (a base backup restores them empty)
    matviews: int
    unpopulated: int
    large_objects: int


def count(conn: Any) -> Counts:
    from psycopg import sql

    tables: dict[str, int] = {}
    unlogged = set()
    for schema, table, is_unlogged in conn.execute(QUERIES["tables"]).fetchall():
        q = sql.SQL("select count(*) from only {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
        row = conn.execute(q).fetchone()
        tables[f"{schema}.{table}"] = int(row[0]) if row else 0
        if is_unlogged:
            unlogged.add(f"{schema}.{table}")
    views = conn.execute(QUERIES["matviews"]).fetchone()
    objects = conn.execute(QUERIES["large_objects"]).fetchone()
    return Counts(
        tables=tables,
        unlogged=frozenset(unlogged),
        matviews=int(views[0]) if views else 0,
        unpopulated=int(views[1]) if views else 0,
        large_objects=int(objects[0]) if objects else 0,
    )


def table_counts(conninfo: str) -> dict[str, int]:
    """Exact row counts of every user table, keyed by ``schema.table``."""
    with connect(conninfo, timeout=10, what="count rows in") as conn:
        return count(conn).tables


def listed(items: Iterable[str], limit: int = 10) -> str:
    shown = list(items)
    return ", ".join(shown[:limit]) + (f" and {len(shown) - limit} more" if len(shown) > limit else "")


def judge_invalid(found: Iterable[str], recorded: Iterable[str] | None, where: str = "") -> tuple[list[str], list[str]]:
    """(problems, warnings) about the invalid indexes ``found`` in a restored copy, given those ``recorded`` as
    invalid in the source when the backup was taken (None: not recorded)."""
    found = sorted(found)
    if not found:
        return [], []
    if recorded is None:
        return [], [
            f"{where}{len(found)} invalid index(es): {listed(found)} (the backup did not record the source's index "
            "state, so the drill cannot tell a faithful copy from damage; check them in the source)"
        ]
    was_invalid = set(recorded)
    faithful = [i for i in found if i in was_invalid]
    damaged = [i for i in found if i not in was_invalid]
    problems = [f"{where}{len(damaged)} index(es) invalid after the restore but valid in the source: {listed(damaged)}"]
    warnings = [f"{where}{len(faithful)} index(es) invalid as in the source (a faithful copy): {listed(faithful)}"]
    return problems if damaged else [], warnings if faithful else []


@attrs.frozen(kw_only=True)
class Amcheck:
    """What amcheck did in one database: B-tree indexes checked, indexes of other access methods (by access
    method) that it has no check for, corruption found, or why it could not run."""

    checked: int = 0
    other: dict[str, int] = attrs.field(factory=dict)
    problems: tuple[str, ...] = ()
    missing: str | None = None


def amcheck_missing(conn: Any) -> str | None:
    """Why amcheck cannot check indexes in this database, or None when it can (the extension is created here when
    the server has it but the database does not). Servers without PostgreSQL's contrib modules lack it."""
    import psycopg

    row = conn.execute("select installed_version from pg_available_extensions where name = 'amcheck'").fetchone()
    if row is None:
        return "not installed"
    if row[0] is None:
        try:
            conn.execute("create extension amcheck")
        except psycopg.Error as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            return f"the extension cannot be created ({first})"
    return None


def amcheck(conn: Any, dbname: str, *, user_only: bool) -> Amcheck:
    """Run amcheck's bt_index_check on every B-tree index in use (of user objects only, with ``user_only``)."""
    from psycopg import sql

    why = amcheck_missing(conn)
    if why is not None:
        return Amcheck(missing=why)
    row = conn.execute(
        "select n.nspname from pg_extension e join pg_namespace n on n.oid = e.extnamespace where e.extname = 'amcheck'"
    ).fetchone()
    check = sql.SQL("select {}.bt_index_check(%s::regclass)").format(sql.Identifier(str(row[0]) if row else "public"))
    other: dict[str, int] = {}
    problems = []
    checked = 0
    for index, am in conn.execute(QUERIES["indexes"], (user_only,)).fetchall():
        if am != "btree":
            other[am] = other.get(am, 0) + 1
            continue
        checked += 1
        try:
            conn.execute(check, (index,))
        except Exception as e:  # noqa: BLE001 - report every corrupt index, not only the first
            problems.append(f"{dbname}: index {index}: {str(e).strip().splitlines()[0]}")
    return Amcheck(checked=checked, other=other, problems=tuple(problems))


def amcheck_summary(results: dict[str, Amcheck]) -> tuple[str, list[str], list[str]]:
    """(detail, problems, warnings) for amcheck runs over databases."""
    missing = {db: r.missing for db, r in results.items() if r.missing is not None}
    problems = [p for r in results.values() for p in r.problems]
    checked = sum(r.checked for r in results.values())
    other: dict[str, int] = {}
    for r in results.values():
        for am, n in r.other.items():
            other[am] = other.get(am, 0) + n
    warnings = []
    if missing and len(missing) == len(results) and len(set(missing.values())) == 1:
        warnings.append(f"amcheck: skipped, {next(iter(missing.values()))}")
        return "", problems, warnings
    warnings += [f"amcheck: skipped in {db}, {why}" for db, why in missing.items()]
    detail = f"amcheck: {checked} B-tree index(es) checked"
    if other:
        kinds = ", ".join(f"{n} {am}" for am, n in sorted(other.items()))
        detail += f" (not amcheck targets: {kinds})"
    return detail, problems, warnings


def outcome(detail: str, problems: list[str], warnings: list[str]) -> tuple[Status, str]:
    text = "; ".join([detail, *problems, *warnings])
    return ("fail" if problems else "warn" if warnings else "pass"), text


def port_of(conninfo: str) -> str:
    return pgtools.conninfo_dict(conninfo).get("port") or "?"


def extras(counts: Iterable[Counts]) -> str:
    """The materialized views and large objects counted, as ", 2 materialized view(s), 3 large object(s)"."""
    items = list(counts)
    views = sum(c.matviews for c in items)
    unpopulated = sum(c.unpopulated for c in items)
    objects = sum(c.large_objects for c in items)
    out = ""
    if views:
        out += f", {views} materialized view(s)" + (f" ({unpopulated} not populated)" if unpopulated else "")
    if objects:
        out += f", {objects} large object(s)"
    return out
