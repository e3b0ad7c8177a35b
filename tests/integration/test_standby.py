"""Backups taken from a hot standby: a real primary archiving into a file:// repository and a streaming standby made
from it with pg_basebackup -R. The base backup from the standby restores to an exact point in time, the logical
backup round-trips, and every other verb pointed at the standby works or says in one line why not."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from pgtesting import Archiving, wait_archived
from test_cli_logical import cli

from pgrecovery import BaseBackup, LocalCluster, LogicalBackup, RecoveryPlan, RecoveryTarget, Repository, pgtools
from pgrecovery.errors import BackupError
from pgrecovery.logical.restore import LogicalRestore

FINGERPRINT = "select count(*), coalesce(sum(i), 0), md5(coalesce(string_agg(note, ',' order by i), '')) from t"


def _insert(pg: LocalCluster, start: int, count: int) -> None:
    pg.execute(f"insert into t select i, md5(i::text) from generate_series({start}, {start + count - 1}) i")


def _caught_up(primary: LocalCluster, standby: LocalCluster, timeout: float = 60) -> None:
    """Wait until the standby has replayed everything the primary has written."""
    (lsn,) = primary.query("select pg_current_wal_lsn()::text")[0]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        (done,) = standby.query("select pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,))[0]
        if done:
            return
        time.sleep(0.05)
    raise AssertionError(f"the standby did not replay up to {lsn} in time")


@pytest.fixture(scope="module")
def pair() -> Iterator[dict[str, Any]]:
    """A primary archiving into its repository, and a streaming standby made from it (not archiving itself)."""
    ctx = Archiving("pgrecovery-standby")
    try:
        ctx.pg.configure(max_wal_senders=5, hot_standby_feedback="on")
        ctx.pg.start()
        ctx.pg.execute("create table t (i int primary key, note text)")
        _insert(ctx.pg, 1, 5000)
        data = ctx.pgdata()
        tool = pgtools.find_tool("pg_basebackup", major=ctx.pg.major)
        pgtools.run(
            [str(tool.path), "-d", ctx.pg.conninfo(), "-D", str(data), "-R", "-X", "stream", "--checkpoint=fast"],
            run_as=ctx.pg.run_as,
            cwd="/",
        )
        standby = LocalCluster(data_dir=data, run_as=ctx.pg.run_as, log_file=data.parent / "server.log")
        standby.start()
        _caught_up(ctx.pg, standby)
        yield {"primary": ctx.pg, "standby": standby, "repo": ctx.repo, "url": ctx.url, "ctx": ctx}
    finally:
        ctx.close()


def _restored(pair: dict[str, Any], plan: RecoveryPlan) -> LocalCluster:
    result = plan.run(pair["ctx"].pgdata(), settings={"archive_mode": "off"})
    return LocalCluster(data_dir=pair["ctx"].made[-1] / "data", port=result.port)


def test_base_backup_from_standby_reaches_a_pitr_target_exactly(pair: dict[str, Any]) -> None:
    primary, standby, repo = pair["primary"], pair["standby"], pair["repo"]
    assert standby.query("select pg_is_in_recovery()")[0] == (True,)
    m = BaseBackup(dbname=standby.conninfo(), primary=primary.conninfo()).run(repo)
    assert m.physical is not None
    assert m.physical.stop_wal is not None
    _insert(primary, 5001, 300)
    primary.execute("select pg_create_restore_point('standby-pitr')")
    want = primary.query(FINGERPRINT)[0]
    _insert(primary, 5301, 300)  # after the target: must not be in the restored copy
    wait_archived(primary)

    restored = _restored(pair, RecoveryPlan(repo, RecoveryTarget.name("standby-pitr"), backup_id=m.id))
    try:
        assert restored.query(FINGERPRINT)[0] == want
    finally:
        restored.stop()


def test_stream_backup_from_standby_restores(pair: dict[str, Any]) -> None:
    primary, standby, repo = pair["primary"], pair["standby"], pair["repo"]
    _caught_up(primary, standby)
    want = primary.query(FINGERPRINT)[0]
    m = BaseBackup(dbname=standby.conninfo(), method="stream", primary=primary.conninfo()).run(repo)
    restored = _restored(pair, RecoveryPlan(repo, RecoveryTarget.immediate(), backup_id=m.id))
    try:
        assert restored.query(FINGERPRINT)[0] == want
    finally:
        restored.stop()


def test_standby_backup_waits_for_the_primary_then_says_what_to_do(pair: dict[str, Any]) -> None:
    """Without a primary to ask for a WAL switch, the wait ends at the timeout with one line saying what to do."""
    primary, standby, repo = pair["primary"], pair["standby"], pair["repo"]
    wait_archived(primary)
    _insert(primary, 100000, 10)  # a segment the primary has not finished
    _caught_up(primary, standby)
    with pytest.raises(BackupError) as e:
        BaseBackup(dbname=standby.conninfo(), archive_timeout=1).run(repo)
    text = str(e.value)
    assert "\n" not in text
    assert "standby" in text
    assert "archive_timeout" in text
    primary.execute("delete from t where i >= 100000")


def test_logical_backup_from_standby_round_trips(pair: dict[str, Any]) -> None:
    primary, standby, repo = pair["primary"], pair["standby"], pair["repo"]
    _caught_up(primary, standby)
    want = primary.query(FINGERPRINT)[0]
    m = LogicalBackup(dbname=standby.conninfo()).run(repo)
    primary.execute("create database standby_copy")
    try:
        LogicalRestore(repo, m.id).run(primary.conninfo("standby_copy"))
        assert primary.query(FINGERPRINT, dbname="standby_copy")[0] == want
    finally:
        primary.execute("drop database standby_copy")


def test_other_verbs_on_a_standby_work_or_say_why_not(pair: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    standby, url = pair["standby"], pair["url"]
    code, out, err = cli(capsys, "--repo", url, "restore-point", "x", "--dbname", standby.conninfo())
    assert code != 0
    assert len(err.strip().splitlines()) == 1, err  # one line, no traceback
    assert "is a standby" in err
    assert "on the primary" in err
    # a restore into the standby is refused in one line, before pg_restore meets the read-only server
    m = LogicalBackup(dbname=pair["primary"].conninfo()).run(Repository(url))
    code, out, err = cli(capsys, "--repo", url, "restore", "logical", m.id, "--dbname", standby.conninfo())
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert "is a standby (in recovery, read-only): restore into its primary" in err
    for argv in (
        ["archiver-status", "--dbname", standby.conninfo()],
        ["check", "--dbname", standby.conninfo()],
        ["backup", "globals", "--dbname", standby.conninfo()],
    ):
        code, out, err = cli(capsys, "--repo", url, *argv)
        assert "Traceback" not in err, err
        assert code == 0 or len(err.strip().splitlines()) == 1, (argv, code, out, err)
    # a conninfo that is not the standby's primary is refused before anything is written
    code, out, err = cli(
        capsys, "--repo", url, "backup", "base", "--dbname", standby.conninfo(), "--primary-dbname", standby.conninfo()
    )
    assert code != 0
    assert len(err.strip().splitlines()) == 1, err
    assert "is not this standby's primary" in err
    base = Repository(url).backups("base")[0]
    code, out, err = cli(capsys, "--repo", url, "verify", base.id, "--drill")
    assert code == 0, err
