"""Monitoring against real PostgreSQL: the status table, runs recorded, the in-database check function, and the
archiver checks on a server whose archive_command fails (then is fixed)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pgtesting import archive_settings

from pgrecovery import LocalCluster, LogicalBackup, PgRecoveryError, Repository
from pgrecovery.cli.main import main
from pgrecovery.monitoring import (
    CheckState,
    RunRecord,
    StatusTable,
    Thresholds,
    check,
    collect_metrics,
    recording,
)
from pgrecovery.pgtools import with_dbname

SECRET = "s3cr3t-Pa55"
WAL_ONLY = Thresholds(backups={})


def _wait(predicate: Callable[[], object], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _states(rows: list[tuple[Any, ...]]) -> dict[str, str]:
    return {str(r[0]): str(r[1]) for r in rows}


# -- the status table --------------------------------------------------------------------------------------------


def test_status_table_is_created_and_records_success_and_failure(fresh_db: str, pg: LocalCluster) -> None:
    table = StatusTable(fresh_db)
    ok = table.record(  # the first record creates the table
        RunRecord(
            kind="logical",
            status="success",
            backup_id="b1",
            file_path="s3://bkt/p/backups/b1",
            size_bytes=42,
            duration_seconds=1.5,
        )
    )
    table.ensure()  # idempotent
    bad = table.record(
        RunRecord(
            kind="logical",
            status="failure",
            file_path=f"s3://AKIA:{SECRET}@bkt/p?sig={SECRET}",
            error=f"pg_dump failed: host=db1 password={SECRET}",
        )
    )
    assert ok.id is not None
    assert bad.id is not None
    assert bad.id > ok.id
    rows = pg.query(
        "select type, status, backup_id, file_path, size_bytes, duration_seconds, error_text, created_at "
        "from pgrecovery_backup_status order by id",
        dbname=_db(fresh_db),
    )
    assert [r[:6] for r in rows] == [
        ("logical", "success", "b1", "s3://bkt/p/backups/b1", 42, 1.5),
        ("logical", "failure", None, "s3://bkt/p", None, None),
    ]
    assert SECRET not in repr(rows)
    assert rows[1][6] == "pg_dump failed: host=db1 password=***"
    assert all(isinstance(r[7], datetime) for r in rows)
    last_ok = table.last("logical", "success")
    assert last_ok is not None
    assert last_ok.backup_id == "b1"
    last = table.last("logical")
    assert last is not None
    assert last.status == "failure"
    assert table.last("base") is None
    assert set(table.latest()) == {"logical"}
    assert [r.id for r in table.recent()] == [bad.id, ok.id]


def test_a_schema_qualified_table_is_quoted_and_works(fresh_db: str) -> None:
    import psycopg

    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("create schema ops")
    table = StatusTable(fresh_db, "ops.runs")
    table.record(RunRecord(kind="verify", status="success"))
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        assert conn.execute("select type, status from ops.runs").fetchall() == [("verify", "success")]
        assert conn.execute("select to_regclass('public.runs')").fetchone() == (None,)


def test_recording_a_real_backup_and_a_failed_one(fresh_db: str, repo: Repository, pg: LocalCluster) -> None:
    pg.execute("create table t (i int); insert into t select generate_series(1, 100)", dbname=_db(fresh_db))
    table = StatusTable(fresh_db, "backup_runs")
    with recording(table, "logical") as run:
        m = LogicalBackup(dbname=fresh_db).run(repo)
        run.note_backup(m, repo)
    with pytest.raises(PgRecoveryError, match="does_not_exist"), recording(table, "logical") as run:
        LogicalBackup(dbname=with_dbname(fresh_db, "does_not_exist") + f" password={SECRET}").run(repo)
    ok = table.last("logical", "success")
    failed = table.last("logical", "failure")
    assert ok is not None
    assert failed is not None
    assert (ok.backup_id, ok.size_bytes) == (m.id, m.size)
    assert ok.file_path == f"{repo.display_url}/backups/{m.id}"
    assert failed.error is not None
    assert "does_not_exist" in failed.error
    assert SECRET not in failed.error
    # the newest run of the kind failed: the check says so, and the repository still holds a fresh backup
    report = check(repo, status_table=table, thresholds=Thresholds(wal=False).with_backup("base", None))
    states = {c.name: c.state for c in report.checks}
    assert states == {"logical-backup": CheckState.OK, "last-run": CheckState.WARNING}
    assert report.exit_code == 1


def _db(conninfo: str) -> str:
    from pgrecovery.pgtools import conninfo_dict

    return conninfo_dict(conninfo)["dbname"]


# -- the SQL function --------------------------------------------------------------------------------------------


def test_check_function_answers_from_the_status_table(fresh_db: str, pg: LocalCluster) -> None:
    table = StatusTable(fresh_db)
    name = table.install_check_function()
    assert name == '"public"."pgrecovery_check"'
    rows = pg.query("select * from pgrecovery_check(check_wal => false)", dbname=_db(fresh_db))
    assert _states(rows) == {"logical-backup": "CRITICAL", "base-backup": "CRITICAL", "last-run": "OK"}

    table.record(RunRecord(kind="logical", status="success", backup_id="b1"))
    table.record(RunRecord(kind="base", status="success", backup_id="b2"))
    rows = pg.query("select * from pgrecovery_check(check_wal => false)", dbname=_db(fresh_db))
    assert _states(rows) == {"logical-backup": "OK", "base-backup": "OK", "last-run": "OK"}

    # a logical success recorded 24.5 hours ago: WARNING; 26 hours: CRITICAL (thresholds can be passed by name)
    pg.execute(
        "update pgrecovery_backup_status set created_at = now() - interval '24 hours 30 minutes' "
        "where type = 'logical'",
        dbname=_db(fresh_db),
    )
    rows = pg.query("select * from pgrecovery_check(check_wal => false)", dbname=_db(fresh_db))
    assert _states(rows)["logical-backup"] == "WARNING"
    rows = pg.query(
        "select * from pgrecovery_check(check_wal => false, logical_critical => '24 hours')", dbname=_db(fresh_db)
    )
    assert _states(rows)["logical-backup"] == "CRITICAL"

    table.record(RunRecord(kind="verify", status="failure", error="row count differs for public.t"))
    rows = pg.query("select * from pgrecovery_check(check_wal => false)", dbname=_db(fresh_db))
    got = {r[0]: r for r in rows}
    assert got["last-run"][1] == "CRITICAL"  # a failed verification
    assert "row count differs for public.t" in got["last-run"][2]


def test_check_function_through_the_cli(fresh_db: str, pg: LocalCluster, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "check",
                "--install-sql",
                "--status-dbname",
                fresh_db,
                "--status-table",
                "mon_runs",
                "--age",
                "logical=1h/2h",
                "--no-wal",
            ]
        )
        == 0
    )
    assert "pgrecovery_check" in capsys.readouterr().out
    StatusTable(fresh_db, "mon_runs").record(RunRecord(kind="logical", status="success"))
    pg.execute("update mon_runs set created_at = now() - interval '90 minutes'", dbname=_db(fresh_db))
    rows = pg.query("select * from pgrecovery_check()", dbname=_db(fresh_db))
    assert _states(rows) == {"logical-backup": "WARNING", "base-backup": "CRITICAL", "last-run": "OK"}


# -- archiver checks on a real server ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def failing() -> Iterator[LocalCluster]:
    """A server whose archive_command always fails, with segments waiting."""
    cluster = LocalCluster.temporary(settings=archive_settings(command="false", fsync=False))
    try:
        cluster.start()
        cluster.execute("create table t (i int, pad text)")
        for _ in range(2):
            cluster.execute("insert into t select i, repeat('x', 200) from generate_series(1, 2000) i")
            cluster.query("select pg_switch_wal()")
        _wait(lambda: cluster.query("select failed_count from pg_stat_archiver")[0][0] >= 3, "archive failures")
        yield cluster
    finally:
        cluster.destroy()


def test_failing_archive_command_is_warning_then_critical(failing: LocalCluster) -> None:
    before = failing.query("select failed_count from pg_stat_archiver")[0][0]
    failing.query("select pg_switch_wal()")
    _wait(lambda: failing.query("select failed_count from pg_stat_archiver")[0][0] > before, "failures to rise")

    report = check(None, dbname=failing.conninfo(), thresholds=WAL_ONLY)
    got = {c.name: c for c in report.checks}
    assert set(got) == {"wal-lag", "wal-ready", "wal-failures"}
    assert got["wal-failures"].state is CheckState.WARNING  # failing for less than 10 minutes
    assert got["wal-failures"].value is not None
    assert got["wal-failures"].value > before
    assert "archive_command is failing" in got["wal-failures"].detail
    assert got["wal-ready"].value is not None
    assert got["wal-ready"].value >= 2  # the segments that could not be archived wait
    assert got["wal-lag"].state is CheckState.OK  # they have not waited long yet
    assert report.exit_code == 1

    later = datetime.now(UTC) + timedelta(hours=2)
    report = check(None, dbname=failing.conninfo(), thresholds=WAL_ONLY, now=later)
    got = {c.name: c for c in report.checks}
    assert got["wal-failures"].state is CheckState.CRITICAL
    assert got["wal-lag"].state is CheckState.CRITICAL
    assert report.exit_code == 2


def test_check_function_sees_the_failing_archiver_like_python_does(failing: LocalCluster) -> None:
    table = StatusTable(failing.conninfo())
    table.install_check_function(WAL_ONLY)
    rows = failing.query("select * from pgrecovery_check()")
    sql_states = _states(rows)
    py_states = {c.name: c.state.name for c in check(None, dbname=failing.conninfo(), thresholds=WAL_ONLY).checks}
    assert {k: sql_states[k] for k in py_states} == py_states
    assert sql_states["wal-failures"] == "WARNING"
    rows = failing.query("select * from pgrecovery_check(failing_critical => '0 seconds', ready_critical => 1)")
    assert _states(rows)["wal-failures"] == "CRITICAL"
    assert _states(rows)["wal-ready"] == "CRITICAL"


def test_without_pg_monitor_the_backlog_is_unknown_not_ok(failing: LocalCluster) -> None:
    failing.execute("do $$ begin create role watcher login; exception when duplicate_object then null; end $$")
    watcher = failing.conninfo().replace("user=postgres", "user=watcher")
    got = {c.name: c for c in check(None, dbname=watcher, thresholds=WAL_ONLY).checks}
    assert got["wal-ready"].state is CheckState.UNKNOWN
    assert "pg_monitor" in got["wal-ready"].detail
    assert got["wal-failures"].state in (CheckState.WARNING, CheckState.CRITICAL)
    failing.execute("grant pg_monitor to watcher")
    got = {c.name: c for c in check(None, dbname=watcher, thresholds=WAL_ONLY).checks}
    assert got["wal-ready"].state is CheckState.OK


def test_cli_and_metrics_on_the_failing_server(
    failing: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "check",
            "--json",
            "-d",
            failing.conninfo(),
            "--status-dbname",
            failing.conninfo(),
            "--age",
            "logical=off",
            "--age",
            "base=off",
            "--failing-critical",
            "0s",
        ]
    )
    data = json.loads(capsys.readouterr().out)
    assert code == 2
    assert data["state"] == "CRITICAL"
    assert {c["check"]: c["state"] for c in data["checks"]}["wal-failures"] == "CRITICAL"
    assert "user=postgres" in data["sources"]["database"]

    out = tmp_path / "pg.prom"
    assert main(["metrics", "-d", failing.conninfo(), "--status-dbname", failing.conninfo(), "-o", str(out)]) == 0
    text = out.read_text()
    assert re.search(r"^pgrecovery_wal_archive_failing 1$", text, re.M)
    failures = re.search(r"^pgrecovery_wal_archive_failures_total (\d+)$", text, re.M)
    assert failures is not None
    assert int(failures.group(1)) >= 3
    ready = re.search(r"^pgrecovery_wal_ready_files (\d+)$", text, re.M)
    assert ready is not None
    assert int(ready.group(1)) >= 1
    assert re.search(r'^pgrecovery_source_up\{source="database"\} 1$', text, re.M)


def test_fixing_archive_command_clears_the_alerts() -> None:
    cluster = LocalCluster.temporary(settings=archive_settings(command="false", fsync=False))
    try:
        cluster.start()
        cluster.query("select pg_switch_wal()")
        cluster.execute("create table t (i int)")
        cluster.query("select pg_switch_wal()")
        _wait(lambda: cluster.query("select failed_count from pg_stat_archiver")[0][0] >= 1, "a failure")
        assert check(None, dbname=cluster.conninfo(), thresholds=WAL_ONLY).state is not CheckState.OK
        cluster.configure(archive_command="true")  # accepts every segment (a test stand-in for a working one)
        cluster.reload()
        _wait(
            lambda: cluster.query("select count(*) = 0 from pg_ls_archive_statusdir() where name like '%.ready'")[0][0],
            "the backlog to drain",
        )
        report = check(None, dbname=cluster.conninfo(), thresholds=WAL_ONLY)
        assert {c.name: c.state for c in report.checks} == dict.fromkeys(
            ("wal-lag", "wal-ready", "wal-failures"), CheckState.OK
        )
        metric = collect_metrics(None, dbname=cluster.conninfo())
        assert metric.ok
        assert "pgrecovery_wal_archive_failing 0\n" in metric.text
        assert "pgrecovery_wal_archive_lag_seconds 0\n" in metric.text
    finally:
        cluster.destroy()


def test_archive_mode_off_is_critical(pg: LocalCluster) -> None:
    (mode,) = pg.query("show archive_mode")[0]
    if mode != "off":
        pytest.skip("the session cluster archives")
    report = check(None, dbname=pg.conninfo(), thresholds=WAL_ONLY)
    assert [(c.name, c.state) for c in report.checks] == [("wal-archiving", CheckState.CRITICAL)]
