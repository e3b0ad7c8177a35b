"""The pg_cron pattern with the real extension: a server with pg_cron preloaded runs `run-policy` on a schedule
(COPY ... TO PROGRAM, as the server's OS user); a real backup lands in the repository, the run in the status table
and in cron.job_run_details, and `check` sees it. Installing is idempotent, removing a missing job is fine, and a
server without pg_cron or a role without the privilege is refused in one line.

pg_cron 1.4 (Debian 12) fires at most once a minute ('N seconds' schedules came in 1.5): the run waits for the
next minute boundary, 30 s on average.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pgtesting import owned_tmpdir

from pgrecovery import LocalCluster, LogicalRestore, Repository, StatusTable
from pgrecovery.cli.main import main
from pgrecovery.cluster import check_runnable_by
from pgrecovery.errors import ConfigurationError
from pgrecovery.pgtools import conninfo_dict, make_conninfo
from pgrecovery.policy.pg_cron import CronSchedule, install_schedule, remove_schedule, show_schedule

JOB = "pgrecovery-cron-it"


def _cron_bindir() -> Path:
    """The server programs of a PostgreSQL install that has pg_cron (apt's postgresql-NN-cron)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/lib/pg_cron.so"))
    if not found:
        message = "pg_cron is not installed (apt-get install postgresql-15-cron)"
        if os.environ.get("PGRECOVERY_REQUIRE_EMULATORS"):
            pytest.fail(f"{message}: required under nox")
        pytest.skip(message)
    return Path(found[-1]).parent.parent / "bin"


@pytest.fixture(scope="module")
def cron_pg() -> Iterator[LocalCluster]:
    """A cluster with pg_cron preloaded and created in its ``postgres`` database."""
    check_runnable_by()  # the job runs this interpreter as the server's OS user
    settings = {"shared_preload_libraries": "pg_cron", "cron.database_name": "postgres", "fsync": False}
    cluster = LocalCluster.temporary(settings=settings, bindir=_cron_bindir())
    try:
        cluster.start()
        cluster.execute("create extension pg_cron")
        yield cluster
    finally:
        cluster.destroy()


def _policy(root: Path, dbname: str) -> Path:
    path = root / "policy.toml"
    path.write_text(
        f'name = "cron-it"\nrepository = "file://{root}/repo"\nstate_dir = "{root}/state"\n\n'
        f'[jobs.shop]\nkind = "logical"\ndbname = "{dbname}"\nevery = "1d"\n'
    )
    path.chmod(0o644)
    return path


def _as(conninfo: str, user: str) -> str:
    return make_conninfo({**conninfo_dict(conninfo), "user": user})


def _jobs(pg: LocalCluster) -> list[tuple[str, str]]:
    return [(r[0], r[1]) for r in pg.query("select jobname, schedule from cron.job order by jobid")]


def test_refused_in_one_line(
    pg: LocalCluster, cron_pg: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = owned_tmpdir("pgrecovery-cron-")  # readable by the server's OS user, as the trial run needs
    policy = _policy(root, "dbname=shop")
    schedule = CronSchedule(policy_file=policy, cron="* * * * *", name=JOB)
    # a server without pg_cron (the session's cluster)
    with pytest.raises(ConfigurationError, match=r"pg_cron is not loaded on .*shared_preload_libraries = 'pg_cron'"):
        install_schedule(pg.conninfo(), schedule)
    code = main(["schedule", "install", "-d", pg.conninfo(), "--policy", str(policy), "--cron", "* * * * *"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1
    assert err.startswith("pgrecovery: pg_cron is not loaded")
    # an option the job would never see is refused, not ignored
    assert (
        main(
            [
                "schedule",
                "install",
                "-d",
                pg.conninfo(),
                "--policy",
                str(policy),
                "--cron",
                "* * * * *",
                "--repo",
                "file:///elsewhere",
            ]
        )
        == 2
    )
    assert "--repo would not reach the job" in capsys.readouterr().err
    # pg_cron loaded, but not created in that database
    cron_pg.execute("create database elsewhere")
    with pytest.raises(ConfigurationError, match="point --dbname at database 'postgres'"):
        install_schedule(cron_pg.conninfo("elsewhere"), schedule)
    # a role that may not run programs on the server
    cron_pg.execute("create role lowly login; grant usage on schema cron to lowly")
    lowly = _as(cron_pg.conninfo(), "lowly")
    with pytest.raises(ConfigurationError, match=r"role 'lowly' may not run programs.*pg_execute_server_program"):
        install_schedule(lowly, schedule)
    # ... which the grant the message names is enough for: the job is the role's own
    cron_pg.execute("grant pg_execute_server_program to lowly")
    assert install_schedule(lowly, schedule).username == "lowly"
    assert remove_schedule(lowly, JOB) is True
    # a schedule pg_cron does not understand, a secret on the command line
    with pytest.raises(ConfigurationError, match="cron schedule 'every minute' refused by pg_cron"):
        install_schedule(cron_pg.conninfo(), CronSchedule(policy_file=policy, cron="every minute", name=JOB))
    # the trial run, as the server's OS user: an interpreter it cannot execute, a policy file it cannot read
    dbname = cron_pg.conninfo()
    with pytest.raises(ConfigurationError, match=r"exit code 127\): .*/nowhere/python: not found: give --python"):
        install_schedule(dbname, CronSchedule(policy_file=policy, cron="* * * * *", python="/nowhere/python"))
    private = _policy(tmp_path, "dbname=shop")  # pytest's tmp_path: root's alone
    with pytest.raises(ConfigurationError, match=r"exit code 2\): pgrecovery: cannot read the policy file"):
        install_schedule(dbname, CronSchedule(policy_file=private, cron="* * * * *"))
    with pytest.raises(ConfigurationError, match="status-dbname carries a secret"):
        CronSchedule(policy_file=policy, cron="* * * * *", status_dbname="dbname=ops password=hunter2")
    assert _jobs(cron_pg) == []  # nothing was left behind by a refusal
    shutil.rmtree(root)


def test_schedule_runs_a_real_backup(
    cron_pg: LocalCluster, capsys: pytest.CaptureFixture[str], record_property: pytest.RecordProperty
) -> None:
    started = time.monotonic()
    root = owned_tmpdir("pgrecovery-cron-")  # the server's OS user writes the repository and the state here
    shop = cron_pg.create_database("shop")
    cron_pg.execute(
        "create table orders (id int primary key, item text);"
        "insert into orders select g, 'item ' || g from generate_series(1, 1000) g",
        dbname="shop",
    )
    policy = _policy(root, shop)
    dbname = cron_pg.conninfo()
    install = ["schedule", "install", "-d", dbname, "--policy", str(policy), "--python", sys.executable]
    # every minute (pg_cron 1.4's finest); installed twice, as a CLI user would on each deploy: one job
    assert main([*install, "--cron", "*/5 * * * *"]) == 0
    assert main([*install, "--cron", "* * * * *"]) == 0
    out = capsys.readouterr().out
    assert "installed pg_cron job pgrecovery-cron-it" in out
    assert _jobs(cron_pg) == [("pgrecovery-cron-it", "* * * * *")]
    (command,) = cron_pg.query("select command from cron.job")[0]
    assert command.startswith("COPY (SELECT 1) TO PROGRAM ")
    assert "run-policy" in command

    # wait for pg_cron's run to finish (the next minute boundary, plus the backup)
    deadline = time.monotonic() + 150
    finished = []
    while time.monotonic() < deadline and not finished:
        time.sleep(1)
        finished = [r for r in show_schedule(dbname, JOB).runs if r.status in ("succeeded", "failed")]
    assert finished, f"pg_cron did not run the job in time{cron_pg.log_tail()}"
    first = finished[-1]
    assert first.ok, f"{first.status}: {first.message}{cron_pg.log_tail()}"

    # a real backup in the repository, with the rows
    repo = Repository(f"file://{root}/repo")
    backup = repo.backups("logical")[0]
    assert backup.database == "shop"
    target = cron_pg.create_database("shop_restored")
    LogicalRestore(repo, backup.id).run(target)
    assert cron_pg.query("select count(*), sum(id) from orders", dbname="shop_restored") == [(1000, 500500)]
    # the run in the status table (beside pg_cron, by default), where check reads it
    recorded = [(r.kind, r.status, r.backup_id) for r in StatusTable(dbname).recent()]
    assert ("logical", "success", backup.id) in recorded
    check = ["check", "--repo", f"file://{root}/repo", "--status-dbname", dbname, "--no-wal"]
    assert main([*check, "--age", "logical=1h/2h", "--age", "base=off"]) == 0, capsys.readouterr().out
    assert capsys.readouterr().out.startswith("OK")
    # without the repository too: the ages from the status table's successes
    assert main(["check", "--status-dbname", dbname, "--no-wal", "--age", "logical=1h/2h", "--age", "base=off"]) == 0
    assert "last-run" in capsys.readouterr().out
    assert main(["schedule", "show", "-d", dbname, "--policy", str(policy)]) == 0
    assert "succeeded" in capsys.readouterr().out

    # removed, and removing again is fine
    assert remove_schedule(dbname, JOB) is True
    assert remove_schedule(dbname, JOB) is False
    assert main(["schedule", "remove", "-d", dbname, "--name", JOB]) == 0
    assert "nothing to remove" in capsys.readouterr().out
    assert _jobs(cron_pg) == []
    assert show_schedule(dbname, JOB).job is None
    shutil.rmtree(root)  # left behind when the test fails, to look at
    record_property("seconds", round(time.monotonic() - started, 1))
