"""The ``pgrecovery`` command end to end, in-process: backup, list, show, contents, restore, verify, delete."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pgtesting import run_cli
from test_logical_roundtrip import EMPTY_MD5, drop_db, fingerprint, relation_data, target, unique_name

from pgrecovery import LocalCluster
from pgrecovery.cli.main import main

__all__ = ["target"]

SHOP_SQL = """
create table customers (
    id bigint generated always as identity primary key,
    name text not null,
    email text unique not null check (email like '%@%')
);
create table orders (
    id bigserial primary key,
    customer_id bigint not null references customers,
    amount numeric(10, 2) not null check (amount > 0),
    note text,
    at timestamptz not null
);
create index orders_customer_idx on orders (customer_id);
comment on table orders is 'what customers bought';
create view big_spenders as select customer_id, sum(amount) from orders group by 1 having sum(amount) > 100;
insert into customers (name, email) select 'customer ' || i, 'c' || i || '@example.org' from generate_series(1, 300) i;
insert into orders (customer_id, amount, note, at)
    select 1 + i % 300, (i % 50) + 0.5, case when i % 4 = 0 then E'tab\\there\\nnewline ünï' end,
           timestamptz '2026-01-01 00:00:00+00' + i * interval '1 minute'
    from generate_series(1, 3000) i;
"""


cli = run_cli  # the command in-process: (exit code, stdout, stderr)


def cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, out, err = cli(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def shop(pg: LocalCluster) -> Iterator[str]:
    name = unique_name("shop")
    conninfo = pg.create_database(name)
    try:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(SHOP_SQL.encode())
        yield conninfo
    finally:
        drop_db(pg, name)


@pytest.fixture(scope="module")
def shop_fp(shop: str) -> dict[str, Any]:
    return fingerprint(shop)


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"file://{tmp_path}/repo"


@pytest.fixture
def backup_id(capsys: pytest.CaptureFixture[str], url: str, shop: str) -> str:
    m = cli_json(capsys, "--repo", url, "backup", "logical", "--dbname", shop)
    return str(m["id"])


def test_backup_list_show(capsys: pytest.CaptureFixture[str], url: str, shop: str) -> None:
    m = cli_json(capsys, "--repo", url, "backup", "logical", "--dbname", shop, "--compression", "gzip")
    assert m["kind"] == "logical"
    assert m["format"] == "custom"
    assert m["compression"] == "gzip"
    assert m["size"] > 0
    assert m["raw_size"] > m["size"]
    assert [f["path"] for f in m["files"]] == ["data/dump.pgdump.gz"]
    assert m["summary"]["tables"] == 2
    assert m["database"] == psycopg.conninfo.conninfo_to_dict(shop)["dbname"]
    assert "password" not in json.dumps(m)
    stored = Path(url.removeprefix("file://")) / "backups" / m["id"] / m["files"][0]["path"]
    assert stored.stat().st_size == m["size"]

    d = cli_json(capsys, "--repo", url, "backup", "logical", "--dbname", shop, "-F", "directory", "-j", "2")
    assert d["format"] == "directory"
    assert len(d["files"]) >= 3

    # text backup output is a readable summary
    code, out, _ = cli(capsys, "--repo", url, "backup", "logical", "--dbname", shop, "-F", "plain")
    assert code == 0
    assert "kind:         logical" in out
    assert "format:       plain" in out
    plain_id = next(line.split()[1] for line in out.splitlines() if line.startswith("id:"))

    listed = cli_json(capsys, "--repo", url, "list")
    assert [b["id"] for b in listed["backups"]] == [m["id"], d["id"], plain_id]
    assert listed["repository"] == url

    code, out, _ = cli(capsys, "--repo", url, "list")
    assert code == 0
    header, *rows = out.strip().splitlines()
    assert header.split() == ["ID", "KIND", "DATABASE", "FORMAT", "SIZE", "DURATION", "FINISHED"]
    assert [r.split()[0] for r in rows] == [m["id"], d["id"], plain_id]
    assert [r.split()[3] for r in rows] == ["custom", "directory", "plain"]

    shown = cli_json(capsys, "--repo", url, "show", m["id"])
    assert shown == m
    assert cli_json(capsys, "--repo", url, "show", "latest")["id"] == plain_id
    code, out, _ = cli(capsys, "--repo", url, "show", d["id"])
    assert code == 0
    assert f"id:           {d['id']}" in out
    assert "files:" in out


def test_contents_edit_and_use_list(
    pg: LocalCluster,
    capsys: pytest.CaptureFixture[str],
    url: str,
    backup_id: str,
    shop_fp: dict[str, Any],
    target: str,
    tmp_path: Path,
) -> None:
    code, out, _ = cli(capsys, "--repo", url, "contents", backup_id)
    assert code == 0
    lines = out.splitlines()
    data_line = next(ln for ln in lines if "TABLE DATA public orders" in ln)
    assert any("TABLE DATA public customers" in ln for ln in lines)

    as_json = cli_json(capsys, "--repo", url, "contents", backup_id)
    assert as_json["backup_id"] == backup_id
    entries = as_json["entries"]
    assert {(e["type"], e["schema"], e["name"]) for e in entries} >= {
        ("TABLE", "public", "orders"),
        ("TABLE DATA", "public", "orders"),
        ("INDEX", "public", "orders_customer_idx"),
        ("FK CONSTRAINT", "public", "orders orders_customer_id_fkey"),
    }
    assert len(entries) == sum(1 for ln in lines if ln and not ln.startswith(";"))

    # comment out the orders data, as one does with pg_restore -L
    listing = tmp_path / "restore.list"
    listing.write_text(out.replace(data_line, ";" + data_line))
    code, out, err = cli(
        capsys,
        "--repo",
        url,
        "restore",
        "logical",
        backup_id,
        "--dbname",
        target,
        "--create",
        "--use-list",
        str(listing),
    )
    assert code == 0, err
    assert backup_id in out
    got = fingerprint(target)
    assert got["data"] == dict(shop_fp["data"], **{"public.orders": (0, EMPTY_MD5)})
    for key in ("relations", "indexes", "constraints", "views", "comments"):
        assert got[key] == shop_fp[key], key


def test_contents_of_one_table(capsys: pytest.CaptureFixture[str], url: str, backup_id: str) -> None:
    entries = cli_json(capsys, "--repo", url, "contents", backup_id, "--table", "orders")["entries"]
    kinds = {(e["type"], e["name"]) for e in entries}
    assert ("TABLE", "orders") in kinds
    assert ("TABLE DATA", "orders") in kinds
    assert ("INDEX", "orders_customer_idx") in kinds
    assert ("COMMENT", "TABLE orders") in kinds
    assert not any(e["name"] == "customers" for e in entries)


def test_restore_logical_into_new_database(
    capsys: pytest.CaptureFixture[str], url: str, backup_id: str, shop_fp: dict[str, Any], target: str
) -> None:
    res = cli_json(capsys, "--repo", url, "restore", "logical", "latest", "--dbname", target, "--create", "-j", "2")
    assert res["backup_id"] == backup_id
    assert res["database"] == psycopg.conninfo.conninfo_to_dict(target)["dbname"]
    assert fingerprint(target) == shop_fp
    # a second --create into the same name is refused and changes nothing
    code, _, err = cli(capsys, "--repo", url, "restore", "logical", backup_id, "--dbname", target, "--create")
    assert code == 1
    assert "already exists" in err
    assert fingerprint(target) == shop_fp


def test_restore_one_schema_and_table_flags(
    capsys: pytest.CaptureFixture[str], url: str, backup_id: str, shop_fp: dict[str, Any], fresh_db: str
) -> None:
    code, _, err = cli(
        capsys, "--repo", url, "restore", "logical", backup_id, "--dbname", fresh_db, "-n", "public", "-t", "customers"
    )
    assert code == 0, err
    assert fingerprint(fresh_db)["data"] == {"public.customers": shop_fp["data"]["public.customers"]}


def test_restore_table(
    capsys: pytest.CaptureFixture[str], url: str, backup_id: str, shop: str, target: str, tmp_path: Path
) -> None:
    cli_json(capsys, "--repo", url, "restore", "logical", backup_id, "--dbname", target, "--create")
    with psycopg.connect(shop) as conn:
        want = relation_data(conn, "public", "orders")
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("drop table orders cascade")

    code, out, err = cli(capsys, "--repo", url, "restore", "table", backup_id, "orders", "--dbname", target)
    assert code == 0, err
    assert "3000 row(s)" in out
    with psycopg.connect(target) as conn:
        assert relation_data(conn, "public", "orders") == want

    # under a new name while the original exists
    res = cli_json(
        capsys, "--repo", url, "restore", "table", backup_id, "public.orders", "--dbname", target, "--new-name", "o2"
    )
    assert res["rows"] == 3000
    with psycopg.connect(target) as conn:
        assert relation_data(conn, "public", "o2") == want
        assert relation_data(conn, "public", "orders") == want

    # refused when the table exists
    code, _, err = cli(capsys, "--repo", url, "restore", "table", backup_id, "orders", "--dbname", target)
    assert code == 1
    assert "public.orders" in err
    assert "already exists" in err

    # the SQL, to a file and to stdout
    sql_file = tmp_path / "orders.sql"
    code, _, err = cli(capsys, "--repo", url, "restore", "table", backup_id, "orders", "--sql", str(sql_file))
    assert code == 0, err
    text = sql_file.read_text()
    assert "CREATE TABLE public.orders" in text
    assert "COPY public.orders" in text
    code, out, _ = cli(capsys, "--repo", url, "restore", "table", backup_id, "orders", "--sql", "-", "--no-data")
    assert code == 0
    assert "CREATE TABLE public.orders" in out
    assert "COPY public.orders" not in out


def test_restore_table_sql_refuses_existing_file(
    capsys: pytest.CaptureFixture[str], url: str, backup_id: str, tmp_path: Path
) -> None:
    sql_file = tmp_path / "orders.sql"
    sql_file.write_text("precious")
    code, _, err = cli(capsys, "--repo", url, "restore", "table", backup_id, "orders", "--sql", str(sql_file))
    assert code in (1, 2)
    assert str(sql_file) in err
    assert sql_file.read_text() == "precious"


def test_verify_with_drill(capsys: pytest.CaptureFixture[str], url: str, backup_id: str) -> None:
    report = cli_json(capsys, "--repo", url, "verify", backup_id, "--drill")
    assert report["ok"] is True
    assert report["backup_id"] == backup_id
    status = {c["name"]: c["status"] for c in report["checks"]}
    assert status == {"checksums": "pass", "readable": "pass", "restore-drill": "pass", "row-counts": "pass"}
    code, out, _ = cli(capsys, "--repo", url, "verify", "latest")
    assert code == 0
    assert out.startswith(f"backup {backup_id}: OK")


def test_verify_drill_on_named_server_reports_changed_source(
    pg: LocalCluster, capsys: pytest.CaptureFixture[str], url: str, db_name: str, fresh_db: str
) -> None:
    """A drill against a given server; a source that changed since is a warning, not a failure."""
    pg.execute("create table t (i int); insert into t values (1)", dbname=db_name)
    m = cli_json(capsys, "--repo", url, "backup", "logical", "--dbname", fresh_db)
    pg.execute("insert into t values (2)", dbname=db_name)
    report = cli_json(capsys, "--repo", url, "verify", m["id"], "--drill", "--drill-dbname", pg.conninfo())
    status = {c["name"]: c["status"] for c in report["checks"]}
    assert report["ok"] is True
    assert status["restore-drill"] == "pass"
    assert status["row-counts"] == "warn"
    assert not pg.query("select 1 from pg_database where datname like 'pgrecovery_verify%'")


def test_globals_backup_and_restore(pg: LocalCluster, capsys: pytest.CaptureFixture[str], url: str) -> None:
    role = unique_name("cli_role")
    pg.execute(f"create role {role} login connection limit 2")
    try:
        m = cli_json(capsys, "--repo", url, "backup", "globals", "--dbname", pg.conninfo(), "--no-role-passwords")
        assert m["kind"] == "globals"
        pg.execute(f"drop role {role}")
        code, _, err = cli(capsys, "--repo", url, "restore", "logical", m["id"], "--dbname", pg.conninfo())
        assert code == 0, err
        assert pg.query("select rolcanlogin, rolconnlimit from pg_roles where rolname = %s", (role,)) == [(True, 2)]
        listed = cli_json(capsys, "--repo", url, "list", "--kind", "globals")
        assert [b["id"] for b in listed["backups"]] == [m["id"]]
        # a globals backup has no table of contents
        code, _, err = cli(capsys, "--repo", url, "contents", m["id"])
        assert code == 2
        assert "globals" in err
    finally:
        pg.execute(f"drop role if exists {role}")


def test_delete(capsys: pytest.CaptureFixture[str], url: str, shop: str) -> None:
    a = cli_json(capsys, "--repo", url, "backup", "logical", "--dbname", shop)["id"]
    b = cli_json(capsys, "--repo", url, "backup", "logical", "--dbname", shop, "-F", "tar")["id"]
    code, out, _ = cli(capsys, "--repo", url, "delete", a)
    assert code == 0
    assert out.strip() == f"deleted {a}"
    assert [x["id"] for x in cli_json(capsys, "--repo", url, "list")["backups"]] == [b]
    assert not (Path(url.removeprefix("file://")) / "backups" / a).exists()
    code, _, err = cli(capsys, "--repo", url, "show", a)
    assert code == 2
    assert a in err
    assert cli_json(capsys, "--repo", url, "delete", "latest") == {"deleted": b, "dependents": []}
    assert cli_json(capsys, "--repo", url, "list")["backups"] == []


def test_clean_with_nothing_to_clean(capsys: pytest.CaptureFixture[str], url: str, backup_id: str) -> None:
    code, out, _ = cli(capsys, "--repo", url, "clean")
    assert code == 0
    assert out.strip() == "nothing to clean"
    assert [x["id"] for x in cli_json(capsys, "--repo", url, "list")["backups"]] == [backup_id]


@pytest.mark.parametrize(
    "argv",
    [
        ["frobnicate"],  # unknown verb
        ["backup"],  # missing kind
        ["backup", "logical", "--format", "zip"],  # bad choice
        ["restore", "logical"],  # missing backup id
        ["restore", "table", "latest"],  # missing table
        ["show"],  # missing id
        ["backup", "logical", "--jobs", "two"],  # not a number
    ],
    ids=[
        "unknown-verb",
        "backup-no-kind",
        "bad-format",
        "restore-no-id",
        "restore-table-no-table",
        "show-no-id",
        "jobs-not-int",
    ],
)
def test_bad_usage_exits_2(capsys: pytest.CaptureFixture[str], url: str, argv: list[str]) -> None:
    code, out, err = cli(capsys, "--repo", url, *argv)
    assert code == 2
    assert out == ""
    assert err.startswith("pgrecovery: ")
    assert err.count("\n") == 1  # one line, naming the fix
    assert "--help" in err


def test_bad_option_values_exit_2(capsys: pytest.CaptureFixture[str], url: str, shop: str) -> None:
    """Values argparse accepts but the library rejects are usage errors too (one line, no traceback)."""
    for argv in (
        ["backup", "logical", "--dbname", shop, "-j", "2"],  # parallel dump needs the directory format
        ["backup", "logical", "--dbname", shop, "--compression", "gzip", "--level", "99"],
        ["backup", "logical", "--dbname", shop, "--data-only", "--schema-only"],
    ):
        code, out, err = cli(capsys, "--repo", url, *argv)
        assert code == 2, argv
        assert out == ""
        assert len(err.strip().splitlines()) == 1
        assert "Traceback" not in err
    assert cli_json(capsys, "--repo", url, "list")["backups"] == []


def test_runs_are_recorded_in_the_status_table(
    pg: LocalCluster, fresh_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--status-dbname records each run (success and failure, redacted) where `pgrecovery check` reads it."""
    repo = str(tmp_path / "repo")
    status = pg.create_database(unique_name("status"))
    table = f"runs_{unique_name('t')}"
    record = ["--status-dbname", status, "--status-table", table]
    assert main(["backup", "logical", "--repo", repo, "-d", fresh_db, "--json", *record]) == 0
    backup_id = json.loads(capsys.readouterr().out)["id"]
    assert main(["verify", backup_id, "--repo", repo, *record]) == 0
    bad = "host=127.0.0.1 port=1 dbname=nowhere password=sekret-do-not-log"
    assert main(["backup", "logical", "--repo", repo, "-d", bad, *record]) == 1
    capsys.readouterr()
    with psycopg.connect(status) as conn:
        rows = conn.execute(
            f"select type, status, backup_id, size_bytes, error_text from {table} order by id"
        ).fetchall()
    assert [(r[0], r[1]) for r in rows] == [("logical", "success"), ("verify", "success"), ("logical", "failure")]
    assert rows[0][2] == backup_id
    assert rows[1][2] == backup_id
    assert rows[0][3] is not None
    assert rows[0][3] > 0
    assert "cannot connect" in rows[2][4]
    assert "sekret-do-not-log" not in str(rows)
    assert main(["check", "--repo", repo, "--status-dbname", status, "--status-table", table, "--json"]) != 3
