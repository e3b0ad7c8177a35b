"""Selective restores (schema, table, edited TOC), one-table recovery, SQL extraction, globals and cluster backups."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from test_logical_roundtrip import (  # shared sample database, fingerprints and fixtures
    EMPTY_MD5,
    assert_same,
    drop_db,
    fingerprint,
    reader_role,
    relation_data,
    source_db,
    source_fp,
    target,
    unique_name,
)

from pgrecovery import (
    ClusterBackup,
    ConfigurationError,
    GlobalsBackup,
    LocalCluster,
    LogicalBackup,
    LogicalRestore,
    Repository,
    RestoreError,
)
from pgrecovery.manifest import BackupManifest
from pgrecovery.pgtools import find_tool

__all__ = ["reader_role", "source_db", "source_fp", "target"]  # fixtures used through pytest

EMPTY = (0, EMPTY_MD5)  # relation_data() of an empty table


@pytest.fixture(scope="module")
def backup(source_db: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Repository, BackupManifest]:
    """One custom-format backup of the sample database, shared by this module's tests."""
    repo = Repository(f"file://{tmp_path_factory.mktemp('selective')}/repo")
    return repo, LogicalBackup(dbname=source_db).run(repo)


@pytest.fixture
def copy(backup: tuple[Repository, BackupManifest], target: str) -> str:
    """A full restore of the sample database into a new database this test may modify."""
    repo, m = backup
    LogicalRestore(repo, m.id).run(target, create=True)
    return target


def table_fingerprint(conninfo: str, schema: str, name: str) -> dict[str, Any]:
    """What a user expects back when one table is recovered: rows, columns, indexes, constraints, triggers,
    grants, comments and the state of the sequences it owns."""
    reg = psycopg.sql.Identifier(schema, name).as_string(None)
    with psycopg.connect(conninfo, autocommit=True) as conn:

        def q(query: str) -> list[tuple[Any, ...]]:
            return [tuple(r) for r in conn.execute(query, {"t": reg}).fetchall()]

        return {
            "data": relation_data(conn, schema, name),
            "columns": q(
                "select a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attidentity::text,"
                " pg_get_expr(d.adbin, d.adrelid), a.attacl::text from pg_attribute a left join pg_attrdef d"
                " on d.adrelid = a.attrelid and d.adnum = a.attnum"
                " where a.attrelid = %(t)s::regclass and a.attnum > 0 and not a.attisdropped order by 1"
            ),
            "indexes": q(
                "select c.relname, pg_get_indexdef(i.indexrelid), i.indisvalid from pg_index i"
                " join pg_class c on c.oid = i.indexrelid where i.indrelid = %(t)s::regclass order by 1"
            ),
            "constraints": q(
                "select conname, contype::text, pg_get_constraintdef(oid) from pg_constraint"
                " where conrelid = %(t)s::regclass order by 1"
            ),
            "triggers": q(
                "select tgname, pg_get_triggerdef(oid) from pg_trigger where tgrelid = %(t)s::regclass"
                " and not tgisinternal order by 1"
            ),
            "acl": q("select relacl::text, pg_get_userbyid(relowner) from pg_class where oid = %(t)s::regclass"),
            "comments": q(
                "select objsubid, description from pg_description where objoid = %(t)s::regclass"
                " and classoid = 'pg_class'::regclass order by 1"
            ),
            "sequences": q(
                "select s.relname, pg_sequence_last_value(s.oid) from pg_depend d join pg_class s on s.oid = d.objid"
                " where d.refobjid = %(t)s::regclass and s.relkind = 'S' order by 1"
            ),
        }


def index_comments(conninfo: str, schema: str, name: str) -> list[tuple[Any, ...]]:
    reg = psycopg.sql.Identifier(schema, name).as_string(None)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        return [
            tuple(r)
            for r in conn.execute(
                "select c.relname, obj_description(c.oid, 'pg_class') from pg_index i"
                " join pg_class c on c.oid = i.indexrelid where i.indrelid = %s::regclass order by 1",
                (reg,),
            )
        ]


def run_psql_file(conninfo: str, path: Path) -> None:
    psql = find_tool("psql")
    res = subprocess.run(
        [str(psql.path), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", conninfo, "-f", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr


def _without(fp: dict[str, Any], needle: str) -> dict[str, Any]:
    """A fingerprint with every catalog row and data entry mentioning ``needle`` removed."""
    out: dict[str, Any] = {}
    for key, value in fp.items():
        if key == "data":
            out[key] = {k: v for k, v in value.items() if needle not in k}
        else:
            out[key] = [r for r in value if needle not in repr(r)]
    return out


# -- selective restores ------------------------------------------------------------------------------------------


def test_restore_one_schema_into_database_that_has_it(
    pg: LocalCluster,
    backup: tuple[Repository, BackupManifest],
    source_fp: dict[str, Any],
    fresh_db: str,
    db_name: str,
) -> None:
    """-n app restores every object of schema app (with its data) and nothing of public."""
    repo, m = backup
    pg.execute("create schema app", dbname=db_name)
    LogicalRestore(repo, m.id).run(fresh_db, schemas=["app"])
    got = fingerprint(fresh_db)
    assert got["data"] == {k: v for k, v in source_fp["data"].items() if k.startswith("app.")}
    for key in ("relations", "columns", "indexes", "views", "matviews", "functions", "triggers", "sequences"):
        assert got[key] == [r for r in source_fp[key] if r[0] == "app"], key
    assert got["large_objects"] == []


def test_restore_one_schema_into_new_database(
    backup: tuple[Repository, BackupManifest], source_fp: dict[str, Any], target: str
) -> None:
    repo, m = backup
    LogicalRestore(repo, m.id).run(target, create=True, schemas=["app"])
    got = fingerprint(target)
    assert got["data"] == {k: v for k, v in source_fp["data"].items() if k.startswith("app.")}
    assert got["schemas"] == [r for r in source_fp["schemas"] if r[0] in ("app", "public")]


def test_restore_one_table(backup: tuple[Repository, BackupManifest], source_fp: dict[str, Any], fresh_db: str) -> None:
    """tables=[...] restores that table's definition and rows only (like pg_restore -t)."""
    repo, m = backup
    LogicalRestore(repo, m.id).run(fresh_db, tables=["samples"])
    got = fingerprint(fresh_db)
    assert got["data"] == {"public.samples": source_fp["data"]["public.samples"]}
    assert [r[:2] for r in got["relations"]] == [("public", "samples")]
    assert got["columns"] == [r for r in source_fp["columns"] if r[:2] == ("public", "samples")]


def test_toc_filtered_restore_leaves_one_table_empty(
    backup: tuple[Repository, BackupManifest], source_fp: dict[str, Any], target: str
) -> None:
    repo, m = backup
    restore = LogicalRestore(repo, m.id)
    toc = restore.list_contents()
    picked = [e for e in toc if not (e.type == "TABLE DATA" and e.schema == "app" and e.name == "orders")]
    assert len(picked) == len(toc) - 1
    res = restore.run(target, create=True, entries=picked)
    assert res.entries == len(picked)

    got = fingerprint(target)
    expected = dict(source_fp, data=dict(source_fp["data"]))
    expected["data"]["app.orders"] = EMPTY
    expected["data"]["app.big_orders"] = EMPTY  # a materialized view of orders, refreshed after the (no) data
    assert_same(got, expected)


def test_empty_toc_selection_is_refused(backup: tuple[Repository, BackupManifest], fresh_db: str) -> None:
    repo, m = backup
    with pytest.raises(ConfigurationError):
        LogicalRestore(repo, m.id).run(fresh_db, entries=[])


def test_plain_backup_cannot_be_restored_selectively(repo: Repository, source_db: str, fresh_db: str) -> None:
    m = LogicalBackup(dbname=source_db, format="plain").run(repo)
    with pytest.raises(ConfigurationError, match="plain"):
        LogicalRestore(repo, m.id).run(fresh_db, schemas=["app"])
    with pytest.raises(ConfigurationError):
        LogicalRestore(repo, m.id).list_contents()


def test_contents_parses_partition_attach_entries(backup: tuple[Repository, BackupManifest]) -> None:
    repo, m = backup
    toc = LogicalRestore(repo, m.id).list_contents()
    attach = sorted((e.schema, e.name) for e in toc if e.type == "TABLE ATTACH")
    assert attach == [("public", "measurements_2023"), ("public", "measurements_2024")]
    assert not any(e.schema == "ATTACH" for e in toc)
    assert m.summary is not None
    assert m.summary.tables == 8  # customers, orders, samples, measurements(+2 partitions), documents, "Mixed Case"
    assert m.summary.schemas == 2


# -- one-table recovery --------------------------------------------------------------------------------------------


def test_restore_table_after_drop_brings_back_rows_indexes_and_constraints(
    backup: tuple[Repository, BackupManifest], source_db: str, copy: str
) -> None:
    repo, m = backup
    expected = table_fingerprint(source_db, "app", "orders")
    with psycopg.connect(copy, autocommit=True) as conn:
        conn.execute("drop table app.orders cascade")  # takes the views on it along
    res = LogicalRestore(repo, m.id).restore_table("app.orders", copy)
    assert res.rows == 1000
    got = table_fingerprint(copy, "app", "orders")
    assert got == expected
    assert {r[0] for r in got["indexes"]} == {"orders_pkey", "orders_customer_idx", "orders_note_idx"}
    assert {r[0] for r in got["constraints"]} == {"orders_pkey", "orders_total_positive", "orders_customer_id_fkey"}
    with psycopg.connect(copy, autocommit=True) as conn:
        # the serial continues, the trigger fires, the FK is enforced
        assert conn.execute(
            "insert into app.orders (customer_id, total, placed_at) values (2, 3, now()) returning id, note"
        ).fetchone() == (1001, "n/a")
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute("insert into app.orders (customer_id, total, placed_at) values (9999, 3, now())")


def test_restore_table_keeps_index_comments(
    backup: tuple[Repository, BackupManifest], source_db: str, copy: str
) -> None:
    repo, m = backup
    with psycopg.connect(copy, autocommit=True) as conn:
        conn.execute("drop table app.orders cascade")
    LogicalRestore(repo, m.id).restore_table("app.orders", copy)
    assert index_comments(copy, "app", "orders") == index_comments(source_db, "app", "orders")


def test_restore_table_with_quoted_name(backup: tuple[Repository, BackupManifest], source_db: str, copy: str) -> None:
    """Identifiers that need quoting: data, columns, indexes, constraints, comments and grants all come back."""
    repo, m = backup
    with psycopg.connect(copy, autocommit=True) as conn:
        conn.execute('drop table public."Mixed Case"')
    res = LogicalRestore(repo, m.id).restore_table("Mixed Case", copy)
    assert res.rows == 2
    assert table_fingerprint(copy, "public", "Mixed Case") == table_fingerprint(source_db, "public", "Mixed Case")


def test_restore_table_under_new_name_leaves_original_untouched(
    pg: LocalCluster, backup: tuple[Repository, BackupManifest], source_db: str, copy: str
) -> None:
    repo, m = backup
    with psycopg.connect(copy, autocommit=True) as conn:  # the live table has moved on since the backup
        conn.execute("delete from app.orders where id > 900")
        conn.execute("update app.orders set note = 'changed' where id <= 10")
    before = fingerprint(copy)
    original = table_fingerprint(copy, "app", "orders")

    res = LogicalRestore(repo, m.id).restore_table("app.orders", copy, new_name="orders_copy")
    assert res.rows == 1000

    after = fingerprint(copy)
    assert table_fingerprint(copy, "app", "orders") == original
    assert_same(_without(after, "orders_copy"), before)  # nothing but the new table (and its objects) appeared

    restored = table_fingerprint(copy, "app", "orders_copy")
    source = table_fingerprint(source_db, "app", "orders")  # what the backup holds
    assert restored["data"] == source["data"]
    assert [r[1:3] for r in restored["columns"]] == [r[1:3] for r in source["columns"]]
    assert [r[2] for r in restored["indexes"]] == [True] * 3
    assert sorted(r[1].replace("orders_copy", "orders") for r in restored["indexes"]) == sorted(
        r[1] for r in source["indexes"]
    )
    constraints = {r[0]: r[2] for r in restored["constraints"]}
    assert constraints == {
        "orders_copy_pkey": "PRIMARY KEY (id)",
        "orders_total_positive": "CHECK ((total > (0)::numeric))",
    }
    # the scratch database used on the way is gone
    assert pg.query("select datname from pg_database where datname like 'pgrecovery_scratch%'") == []


def test_restore_table_refuses_to_overwrite_existing_table(
    backup: tuple[Repository, BackupManifest], copy: str
) -> None:
    repo, m = backup
    with psycopg.connect(copy, autocommit=True) as conn:
        conn.execute("delete from app.orders where id > 500")
    before = fingerprint(copy)
    with pytest.raises(RestoreError, match=r"app\.orders\b") as exc:
        LogicalRestore(repo, m.id).restore_table("app.orders", copy)
    assert "already exists" in str(exc.value)
    assert_same(fingerprint(copy), before)

    # the same when the new name is taken
    with psycopg.connect(copy, autocommit=True) as conn:
        conn.execute("create table app.orders_copy (i int)")
    before = fingerprint(copy)
    with pytest.raises(RestoreError, match=r"app\.orders_copy"):
        LogicalRestore(repo, m.id).restore_table("app.orders", copy, new_name="orders_copy")
    assert_same(fingerprint(copy), before)


def test_restore_table_unknown_table(backup: tuple[Repository, BackupManifest], copy: str) -> None:
    repo, m = backup
    with pytest.raises(ConfigurationError, match="no_such_table"):
        LogicalRestore(repo, m.id).restore_table("app.no_such_table", copy)


def test_extract_table_sql_recreates_the_table(
    backup: tuple[Repository, BackupManifest], source_db: str, copy: str, tmp_path: Path
) -> None:
    repo, m = backup
    text = LogicalRestore(repo, m.id).extract_table("app.orders")
    assert "CREATE TABLE app.orders" in text
    assert "COPY app.orders" in text
    assert "CREATE INDEX orders_customer_idx" in text
    assert "customers" not in text.replace("app.customers(id)", "")  # only the FK mentions another table
    path = tmp_path / "orders.sql"
    path.write_text(text)
    with psycopg.connect(copy, autocommit=True) as conn:
        conn.execute("drop table app.orders cascade")
    run_psql_file(copy, path)
    assert table_fingerprint(copy, "app", "orders") == table_fingerprint(source_db, "app", "orders")


def test_extract_table_data_only(
    backup: tuple[Repository, BackupManifest], source_db: str, copy: str, tmp_path: Path
) -> None:
    """definition=False gives the rows only: they reload into an emptied table."""
    repo, m = backup
    text = LogicalRestore(repo, m.id).extract_table("public.samples", definition=False)
    assert "CREATE TABLE" not in text
    path = tmp_path / "samples.sql"
    path.write_text(text)
    with psycopg.connect(copy, autocommit=True) as conn:
        conn.execute("truncate public.samples")
    run_psql_file(copy, path)
    with psycopg.connect(copy) as a, psycopg.connect(source_db) as b:
        assert relation_data(a, "public", "samples") == relation_data(b, "public", "samples")


# -- globals and whole clusters -------------------------------------------------------------------------------------


@pytest.fixture
def roles(pg: LocalCluster) -> Iterator[tuple[str, str]]:
    a, b = f"glob_a_{secrets.token_hex(3)}", f"glob_b_{secrets.token_hex(3)}"
    pg.execute(
        f"create role {b} nologin createdb; "
        f"create role {a} login password 'pw-{a}' connection limit 3 valid until '2099-01-01 00:00:00+00' in role {b}; "
        f"alter role {a} set work_mem = '7MB'"
    )
    try:
        yield a, b
    finally:
        pg.execute(f"drop role if exists {a}; drop role if exists {b}")


def _role_state(pg: LocalCluster, names: tuple[str, ...]) -> list[tuple[Any, ...]]:
    return pg.query(
        "select r.rolname, r.rolcanlogin, r.rolcreatedb, r.rolconnlimit, r.rolvaliduntil, r.rolpassword,"
        " (select array_agg(g.rolname order by g.rolname) from pg_auth_members m join pg_roles g on g.oid = m.roleid"
        "  where m.member = r.oid),"
        " (select array_agg(c order by c) from pg_db_role_setting s, unnest(s.setconfig) c where s.setrole = r.oid)"
        " from pg_authid r where r.rolname = any(%s) order by 1",
        (list(names),),
    )


def test_globals_backup_recreates_dropped_roles(pg: LocalCluster, repo: Repository, roles: tuple[str, str]) -> None:
    before = _role_state(pg, roles)
    assert len(before) == 2
    m = GlobalsBackup(dbname=pg.conninfo()).run(repo)
    assert m.kind == "globals"
    assert [b.id for b in repo.backups("globals")] == [m.id]
    a, b = roles
    pg.execute(f"drop role {a}; drop role {b}")
    assert _role_state(pg, roles) == []

    LogicalRestore(repo, m.id).run(pg.conninfo())
    assert _role_state(pg, roles) == before  # attributes, password, membership and settings are back


def test_globals_restore_keeps_existing_roles(pg: LocalCluster, repo: Repository, roles: tuple[str, str]) -> None:
    m = GlobalsBackup(dbname=pg.conninfo(), roles_only=True).run(repo)
    before = _role_state(pg, roles)
    LogicalRestore(repo, m.id).run(pg.conninfo())  # every role exists already: no error
    assert _role_state(pg, roles) == before


def test_cluster_backup_restores_every_database_into_another_cluster(
    pg: LocalCluster, repo: Repository, source_db: str, reader_role: str
) -> None:
    extra = unique_name("second")
    pg.create_database(extra)
    try:
        pg.execute(
            "create table t (id int primary key, v text); insert into t values (1, 'a'), (2, E'b\\nc')", dbname=extra
        )
        m = ClusterBackup(dbname=pg.conninfo()).run(repo)
        names = list(m.databases)
        assert {extra, psycopg.conninfo.conninfo_to_dict(source_db)["dbname"], "postgres"} <= set(names)
        expected = {name: fingerprint(pg.conninfo(name)) for name in names}
    finally:
        drop_db(pg, extra)

    other = LocalCluster.temporary()
    try:
        other.start()
        LogicalRestore(repo, m.id).run(other.conninfo())
        assert other.query("select 1 from pg_roles where rolname = %s", (reader_role,)) == [(1,)]
        restored = {r[0] for r in other.query("select datname from pg_database")}
        assert set(names) <= restored
        for name in names:
            assert_same(fingerprint(other.conninfo(name)), expected[name])
    finally:
        other.destroy()
