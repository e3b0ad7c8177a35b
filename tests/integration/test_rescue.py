"""Row-level and table-level point-in-time rescue on real clusters: a DELETE and a DROP TABLE undone from the
archive, through a sandbox that is always removed and never writes into the production repository."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
from pgtesting import archiving_cluster
from pgtesting import owned_tmpdir as _owned_tmpdir
from pgtesting import wait_archived as _wait_archived

from pgrecovery import (
    BaseBackup,
    ConfigurationError,
    DatabaseError,
    LocalCluster,
    RecoveryTarget,
    RestoreError,
    Sandbox,
    recover_rows,
    recover_table,
    sandbox_at,
)
from pgrecovery.cli.main import main
from pgrecovery.recovery import rescue as rescue_module

ORDERS = "select id, o::text from orders o order by id"
AUDIT = "select a::text from {} a order by id"


def _repo_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def _processes_under(path: Path) -> list[str]:
    """Command lines of running processes that name ``path`` (a sandbox server, a WAL prefetcher)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in cmdline:
            found.append(cmdline)
    return found


@pytest.fixture(scope="module")
def story() -> Iterator[dict[str, Any]]:
    """A cluster archiving into a repository; a base backup; more work; the target; then the accident (a DELETE
    and a DROP TABLE in one transaction); then more work on the live database."""
    with archiving_cluster("pgrecovery-rescue", table=None) as ctx:
        pg, root, url = ctx.pg, ctx.root, ctx.url
        live = pg.create_database("shop")
        with pg.connect("shop") as conn:
            conn.execute(
                "create table orders (id int primary key, customer text not null, amount numeric(10,2), "
                "note text, span interval, created timestamptz not null default clock_timestamp(), "
                "doubled numeric generated always as (amount * 2) stored)"
            )
            conn.execute(
                "insert into orders (id, customer, amount, note, span) "
                "select i, 'customer ' || i, i * 1.25, case when i % 7 = 0 then null else 'note ' || i end, "
                "make_interval(months => i % 3, days => i) from generate_series(1, 200) i"
            )
            conn.execute(
                r"""update orders set customer = 'Zoë "the" tab	and
newline \ back', span = '1 mon 2 days 03:04:05' where id = 55"""
            )
            conn.execute("create table audit (id int primary key, what text not null)")
            conn.execute("create index audit_what on audit (what)")
            conn.execute("insert into audit select i, 'event ' || i from generate_series(1, 50) i")
        repo = ctx.repo
        backup = BaseBackup(dbname=pg.conninfo()).run(repo)
        facts: dict[str, Any] = {"repo": repo, "root": root, "url": url, "pg": pg, "live": live, "backup": backup}
        with pg.connect("shop") as conn:
            conn.execute(
                "insert into orders (id, customer, amount) select i, 'late ' || i, i from generate_series(201, 250) i"
            )
            conn.execute("insert into audit select i, 'event ' || i from generate_series(51, 80) i")
            conn.execute("update orders set amount = 0.5 where id = 60")
            time.sleep(0.2)
            facts["time"] = conn.execute("select clock_timestamp()").fetchone()[0]  # type: ignore[index]
            time.sleep(0.2)
            conn.execute("select pg_create_restore_point('before_accident')")
            facts["deleted"] = conn.execute("select o::text from orders o where id between 50 and 80").fetchall()
            facts["deleted_cols"] = conn.execute(
                "select id::text, customer, amount::text, note, span::text, created::text, doubled::text "
                "from orders where id between 50 and 80 order by id"
            ).fetchall()
            facts["orders_then"] = conn.execute(ORDERS).fetchall()
            facts["audit_then"] = conn.execute(AUDIT.format("audit")).fetchall()
            with conn.transaction():  # the accident
                facts["xid"] = int(conn.execute("select pg_current_xact_id()::text").fetchone()[0])  # type: ignore[index]
                conn.execute("delete from orders where id between 50 and 80")
                conn.execute("drop table audit")
            time.sleep(0.2)
            conn.execute("insert into orders (id, customer, amount) values (300, 'after the accident', 3)")
            conn.execute("update orders set amount = 999 where id = 10")  # a change after the target: kept
            facts["orders_live"] = conn.execute(ORDERS).fetchall()
        _wait_archived(pg)
        facts["files"] = _repo_files(root)
        yield facts


@pytest.fixture
def workdir(story: dict[str, Any]) -> Iterator[Path]:
    """Where the sandbox lives; afterwards: nothing left in it, no process naming it, nothing new in the
    production repository (no WAL, no timeline history, no incident record); the live database reset."""
    path = _owned_tmpdir("pgrecovery-rescue-work-")
    yield path
    try:
        assert os.listdir(path) == [], "the sandbox's directory was left behind"
        assert _processes_under(path) == [], "a sandbox process is still running"
        # the source cluster may archive its own (timeline 1) segments meanwhile; a sandbox adds nothing
        added = _repo_files(story["root"]) - story["files"]
        assert [f for f in added if not f.startswith("wal/00000001/") or ".history" in f or ".partial" in f] == [], (
            added
        )
    finally:
        shutil.rmtree(path, ignore_errors=True)
        with story["pg"].connect("shop") as conn:
            conn.execute("delete from orders where id between 50 and 80")
            tables = conn.execute("select relname from pg_class where relname like 'audit%' and relkind = 'r'")
            for (name,) in tables.fetchall():
                conn.execute(f'drop table "{name}"')
        assert story["pg"].query(ORDERS, dbname="shop") == story["orders_live"]


def _live_orders(story: dict[str, Any]) -> list[tuple[Any, ...]]:
    pg: LocalCluster = story["pg"]
    return pg.query(ORDERS, dbname="shop")


def test_deleted_rows_come_back_exactly(story: dict[str, Any], workdir: Path) -> None:
    res = recover_rows(
        story["repo"],
        RecoveryTarget.time(story["time"]),
        "select * from orders where id between %s and %s order by id",
        params=(50, 80),
        dbname="shop",
        into=story["live"],
        table="public.orders",
        workdir=workdir,
    )
    assert (res.selected, res.inserted, res.skipped) == (31, 31, 0)
    assert res.backup_id == story["backup"].id
    # the rows as they were, value for value (an interval with months, a tab, a newline, a backslash, NULLs)
    assert res.columns == ("id", "customer", "amount", "note", "span", "created", "doubled")
    assert [tuple(r) for r in res.text_rows] == story["deleted_cols"]
    assert res.rows[0][0] == 50
    # the live table: exactly the deleted rows added back; row 300 (inserted later) once; row 10 keeps 999
    expected = sorted(story["orders_live"] + [(int(t[0][1:].split(",")[0]), t[0]) for t in story["deleted"]])
    assert _live_orders(story) == expected
    assert story["pg"].query("select amount from orders where id = 10", dbname="shop")[0][0] == 999
    assert story["pg"].query("select count(*) from orders where id = 300", dbname="shop")[0][0] == 1


def test_skip_leaves_existing_rows_alone(story: dict[str, Any], workdir: Path) -> None:
    """Every row at the restore point, inserted with on_conflict=skip: only the missing ones arrive."""
    res = recover_rows(
        story["repo"],
        RecoveryTarget.name("before_accident"),
        "select id, customer, amount, note, span, created from orders",
        dbname="shop",
        into=story["live"],
        table="orders",
        on_conflict="skip",
        workdir=workdir,
    )
    assert (res.selected, res.inserted, res.skipped) == (250, 31, 219)
    assert _live_orders(story) == sorted(
        story["orders_live"] + [(int(t[0][1:].split(",")[0]), t[0]) for t in story["deleted"]]
    )
    assert story["pg"].query("select amount from orders where id = 10", dbname="shop")[0][0] == 999


def test_a_conflict_inserts_nothing(story: dict[str, Any], workdir: Path) -> None:
    with pytest.raises(RestoreError, match=r"already exists in public\.orders.*on_conflict='skip'"):
        recover_rows(
            story["repo"],
            RecoveryTarget.time(story["time"]),
            "select * from orders where id between 45 and 55",
            dbname="shop",
            into=story["live"],
            table="orders",
            workdir=workdir,
        )
    assert _live_orders(story) == story["orders_live"]


def test_wrong_live_table_is_refused_before_any_sandbox(story: dict[str, Any], workdir: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"table public\.nosuch does not exist"):
        recover_rows(
            story["repo"], RecoveryTarget.time(story["time"]), "select 1", dbname="shop",
            into=story["live"], table="nosuch", workdir=workdir,
        )  # fmt: skip
    with pytest.raises(ConfigurationError, match="both into="):
        recover_rows(story["repo"], RecoveryTarget.time(story["time"]), "select 1", dbname="shop", into=story["live"])


def test_dropped_table_comes_back_under_a_new_name(story: dict[str, Any], workdir: Path) -> None:
    target = RecoveryTarget.time(story["time"])
    res = recover_table(story["repo"], target, "audit", dbname="shop", into=story["live"], workdir=workdir)
    name = f"audit_at_{story['time'].astimezone(UTC):%Y%m%d%H%M%S}"
    assert res.new_table == f"public.{name}"
    assert res.rows == 80
    assert story["pg"].query(AUDIT.format(name), dbname="shop") == story["audit_then"]
    indexes = {
        r[0] for r in story["pg"].query(f"select indexname from pg_indexes where tablename = '{name}'", dbname="shop")
    }
    assert len(indexes) == 2  # primary key and audit_what, renamed with the table


def test_dropped_table_comes_back_under_its_own_name(story: dict[str, Any], workdir: Path) -> None:
    res = recover_table(
        story["repo"], RecoveryTarget.name("before_accident"), "public.audit", dbname="shop", into=story["live"],
        new_name="audit", workdir=workdir,
    )  # fmt: skip
    assert (res.new_table, res.rows) == ("public.audit", 80)
    pg: LocalCluster = story["pg"]
    assert pg.query(AUDIT.format("audit"), dbname="shop") == story["audit_then"]
    indexes = pg.query("select indexname from pg_indexes where tablename = 'audit' order by 1", dbname="shop")
    assert indexes == [("audit_pkey",), ("audit_what",)]


def test_an_existing_name_is_refused_before_any_sandbox(story: dict[str, Any], workdir: Path) -> None:
    with pytest.raises(RestoreError, match=r"public\.orders already exists .* choose another name"):
        recover_table(
            story["repo"], RecoveryTarget.time(story["time"]), "audit", dbname="shop", into=story["live"],
            new_name="orders", workdir=workdir,
        )  # fmt: skip
    assert _live_orders(story) == story["orders_live"]


def test_the_sandbox_is_removed_when_the_query_fails(story: dict[str, Any], workdir: Path) -> None:
    with pytest.raises(DatabaseError, match=r"rescue query failed.*no_such_column"):
        recover_rows(
            story["repo"], RecoveryTarget.time(story["time"]), "select no_such_column from orders",
            dbname="shop", workdir=workdir,
        )  # fmt: skip
    with pytest.raises(ConfigurationError, match="database 'nope' did not exist"):
        recover_rows(story["repo"], RecoveryTarget.time(story["time"]), "select 1", dbname="nope", workdir=workdir)


def test_the_sandbox_is_removed_on_keyboard_interrupt(
    story: dict[str, Any], workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Path] = []

    def interrupted(cluster: LocalCluster, *args: object) -> None:
        seen.append(cluster.data_dir)
        assert cluster.is_running()
        raise KeyboardInterrupt

    monkeypatch.setattr(rescue_module, "_select", interrupted)
    with pytest.raises(KeyboardInterrupt):
        recover_rows(story["repo"], RecoveryTarget.time(story["time"]), "select 1", dbname="shop", workdir=workdir)
    assert seen
    assert not seen[0].exists()


def test_sandbox_is_paused_at_the_target_and_does_not_archive(story: dict[str, Any], workdir: Path) -> None:
    with sandbox_at(story["repo"], RecoveryTarget.name("before_accident"), workdir=workdir) as pg:
        state = pg.query("select pg_is_in_recovery(), pg_get_wal_replay_pause_state(), current_setting('archive_mode')")
        assert state[0] == (True, "paused", "off")
        assert pg.query(ORDERS, dbname="shop") == story["orders_then"]
        data = pg.data_dir
    assert not data.exists()


def test_sandbox_inside_a_locking_transaction_is_promoted_and_does_not_archive(
    story: dict[str, Any], workdir: Path
) -> None:
    """Just before the accident's commit, replay holds its DROP TABLE's lock: paused, nothing could read the
    table; the sandbox promotes itself (aborting that transaction) onto a timeline that goes nowhere."""
    sandbox = Sandbox(story["repo"], RecoveryTarget.xid(story["xid"], inclusive=False), workdir=workdir)
    with sandbox as pg:
        assert sandbox.state == "promoted"
        assert pg.query("select pg_is_in_recovery(), current_setting('archive_mode')")[0] == (False, "off")
        assert pg.query(AUDIT.format("audit"), dbname="shop") == story["audit_then"]
        assert pg.query(ORDERS, dbname="shop") == story["orders_then"]
        pg.execute("select pg_switch_wal()")  # even a finished segment of the new timeline goes nowhere
        assert list((pg.data_dir / "pg_wal" / "archive_status").glob("*.ready")) == []


def test_cli_rescue_rows_prints_them_as_json(
    story: dict[str, Any], workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["--repo", story["url"], "--json", "rescue", "rows", "--target-name", "before_accident", "--sandbox-db",
         "shop", "--query", "select id, span from orders where id = %s", "--param", "55", "--workdir", str(workdir)]
    )  # fmt: skip
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["columns"] == ["id", "span"]
    assert out["rows"] == [["55", "1 mon 2 days 03:04:05"]]
    assert (out["selected"], out["inserted"], out["table"]) == (1, 0, None)
    assert _live_orders(story) == story["orders_live"]


def test_cli_rescue_table_with_xid_and_new_name(
    story: dict[str, Any], workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    into = story["live"] + " password=not-a-real-secret"
    code = main(
        ["--repo", story["url"], "--json", "rescue", "table", "public.audit", "--target-xid", str(story["xid"]),
         "--exclusive", "--sandbox-db", "shop", "--into", into, "--new-name", "audit_before", "--workdir", str(workdir)]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "not-a-real-secret" not in captured.out + captured.err
    out = json.loads(captured.out)
    assert (out["new_table"], out["rows"]) == ("public.audit_before", 80)
    assert story["pg"].query(AUDIT.format("audit_before"), dbname="shop") == story["audit_then"]
    # an existing name: a usage-free refusal (exit 1) that names the table and the fix
    code = main(
        ["--repo", story["url"], "rescue", "table", "audit", "--target-xid", str(story["xid"]), "--sandbox-db",
         "shop", "--into", story["live"], "--new-name", "audit_before"]
    )  # fmt: skip
    assert code == 1
    assert "public.audit_before already exists" in capsys.readouterr().err


def test_cli_needs_a_target(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--repo", "file:///nowhere", "rescue", "rows", "--sandbox-db", "x", "--query", "select 1"]) == 2
    assert "one of the arguments --target-time" in capsys.readouterr().err
