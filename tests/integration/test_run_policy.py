"""`run_policy` against a real PostgreSQL server: a logical backup and its verification (a restore drill that
counts rows), run when due and only then, with a fake clock; a failing job does not stop the others."""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pgrecovery import LocalCluster, LogicalRestore, Repository, StatusTable, load_policy, run_policy
from pgrecovery.policy import BackupPolicy

NOW = datetime(2031, 6, 1, 2, 30, tzinfo=UTC)  # after the 02:00 fire time; far from the real clock on purpose
SECRET = "pw-that-must-not-leak-7c1e"


def make_policy(tmp_path: Path, jobs: str) -> BackupPolicy:
    head = f'name = "it"\nrepository = "file://{tmp_path}/repo"\nstate_dir = "{tmp_path}/state"\n'
    path = tmp_path / "policy.toml"
    path.write_text(head + textwrap.dedent(jobs))
    return load_policy(path)


def fill(pg: LocalCluster, db_name: str, rows: int) -> None:
    pg.execute(
        "create table if not exists orders (id int primary key, item text);"
        f"insert into orders select g, 'item ' || g from generate_series(1, {rows}) g on conflict do nothing",
        dbname=db_name,
    )


def backup_and_verify(fresh_db: str, pg: LocalCluster) -> str:
    return f"""
    [jobs.shop]
    kind = "logical"
    dbname = "{fresh_db}"
    every = "1d"
    at = "02:00"

    [jobs.check]
    kind = "verify"
    every = "1d"
    at = "02:00"
    backup_kind = "logical"
    drill = true
    drill_server = "{pg.conninfo()}"
    """


def test_runs_when_due_and_only_then(
    pg: LocalCluster, fresh_db: str, db_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGPASSWORD", SECRET)  # trust authentication ignores it; it must appear nowhere
    fill(pg, db_name, 500)
    policy = make_policy(tmp_path, backup_and_verify(fresh_db, pg))
    repo = Repository(f"file://{tmp_path}/repo")

    first = run_policy(policy, now=NOW)
    assert [(j.name, j.status) for j in first.jobs] == [("shop", "succeeded"), ("check", "succeeded")], first.jobs
    shop, check = first.jobs
    (m1,) = repo.backups("logical")
    assert shop.backup_id == m1.id
    assert check.backup_id == m1.id  # verified the backup the job before it took
    assert check.detail["checks"]["restore-drill"] == "pass"

    second = run_policy(policy, now=NOW + timedelta(minutes=5))  # the next cron call
    assert second.ran == []
    assert [j.status for j in second.jobs] == ["not-due", "not-due"]
    assert len(repo.backups("logical")) == 1

    fill(pg, db_name, 800)
    planned = run_policy(policy, now=NOW + timedelta(days=1), dry_run=True)
    assert [j.status for j in planned.jobs] == ["due", "due"]
    assert "scheduled at 2031-06-02 02:00 UTC; last success started 2031-06-01 02:30 UTC" in planned.jobs[0].reason

    third = run_policy(policy, now=NOW + timedelta(days=1))
    assert [j.status for j in third.jobs] == ["succeeded", "succeeded"]
    m1_again, m2 = repo.backups("logical")
    assert m1_again.id == m1.id
    assert third.jobs[1].backup_id == m2.id
    # The new backup holds the new rows: restore it next to the source and compare.
    target = pg.create_database(f"{db_name}_restored")
    try:
        LogicalRestore(repo, m2.id).run(target)
        assert pg.query("select count(*), sum(id) from orders", dbname=f"{db_name}_restored") == [(800, 320400)]
    finally:
        pg.execute(f'drop database if exists "{db_name}_restored" with (force)')

    state_file = Path(third.state_file)
    everything = state_file.read_text() + json.dumps(third.to_dict()) + json.dumps(first.to_dict())
    assert SECRET not in everything


def test_a_failing_job_is_recorded_and_the_others_still_run(
    pg: LocalCluster, fresh_db: str, db_name: str, tmp_path: Path
) -> None:
    fill(pg, db_name, 50)
    broken = f"""
    [jobs.broken]
    kind = "logical"
    dbname = "{pg.conninfo("no_such_database")}"
    every = "1d"
    at = "02:00"
    """
    policy = make_policy(tmp_path, broken + backup_and_verify(fresh_db, pg))
    status = StatusTable(pg.conninfo(db_name), "policy_runs")
    first = run_policy(policy, now=NOW, status_table=status)
    assert [(j.name, j.status) for j in first.jobs] == [
        ("broken", "failed"),
        ("shop", "succeeded"),
        ("check", "succeeded"),
    ]
    assert not first.ok
    error = first.jobs[0].error
    assert error is not None
    assert "no_such_database" in error
    state = json.loads(Path(first.state_file).read_text())
    assert state["jobs"]["broken"]["failures"] == 1
    assert "no_such_database" in state["jobs"]["broken"]["last_failure"]["error"]
    assert "last_success" not in state["jobs"]["broken"]
    assert [m.database for m in Repository(f"file://{tmp_path}/repo").backups("logical")] == [db_name]
    # every job that ran is in the status table, where `pgrecovery check` and `metrics` read it
    recorded = [(r.kind, r.status, r.backup_id) for r in reversed(status.recent())]
    assert recorded == [
        ("logical", "failure", None),
        ("logical", "success", first.jobs[1].backup_id),
        ("verify", "success", first.jobs[1].backup_id),  # the backup it verified
    ]

    # The next call retries the failed job only (the repository's backup of another database does not count).
    second = run_policy(policy, now=NOW + timedelta(minutes=5))
    assert [(j.name, j.status) for j in second.jobs] == [
        ("broken", "failed"),
        ("shop", "not-due"),
        ("check", "not-due"),
    ]
    assert "retrying after the failure at 2031-06-01 02:30 UTC" in second.jobs[0].reason
    assert json.loads(Path(second.state_file).read_text())["jobs"]["broken"]["failures"] == 2
