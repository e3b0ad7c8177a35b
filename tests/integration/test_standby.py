"""Backups taken from a hot standby: a real primary archiving into a file:// repository and a streaming standby made
from it with pg_basebackup -R. The base backup from the standby restores to an exact point in time, the logical
backup round-trips, and every other verb pointed at the standby works or says in one line why not."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from pgtesting import MAJORS, Archiving, major_or_skip, wait_archived
from test_cli_logical import cli

from pgrecovery import BaseBackup, LocalCluster, LogicalBackup, RecoveryPlan, RecoveryTarget, Repository, pgtools
from pgrecovery import _walnames as wn
from pgrecovery.errors import BackupError
from pgrecovery.logical.restore import LogicalRestore
from pgrecovery.wal.archiver import WalArchiver

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


def _standby_of(ctx: Archiving, **settings: object) -> LocalCluster:
    """A streaming standby of ``ctx``'s primary (pg_basebackup -R, ``settings`` added), started and caught up."""
    data = ctx.pgdata()
    tool = pgtools.find_tool("pg_basebackup", major=ctx.pg.major)
    pgtools.run(
        [str(tool.path), "-d", ctx.pg.conninfo(), "-D", str(data), "-R", "-X", "stream", "--checkpoint=fast"],
        run_as=ctx.pg.run_as,
        cwd="/",
    )
    standby = LocalCluster(data_dir=data, run_as=ctx.pg.run_as, log_file=data.parent / "server.log")
    if settings:
        standby.configure(**settings)
    standby.start()
    _caught_up(ctx.pg, standby)
    return standby


def _primary(prefix: str) -> Archiving:
    ctx = Archiving(prefix)
    ctx.pg.configure(max_wal_senders=5, hot_standby_feedback="on")
    ctx.pg.start()
    ctx.pg.execute("create table t (i int primary key, note text)")
    _insert(ctx.pg, 1, 5000)
    return ctx


@pytest.fixture(scope="module", params=MAJORS)
def pair(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """On each major: a primary archiving into its repository, and a streaming standby made from it (not archiving
    itself)."""
    with major_or_skip(request.param).active():
        ctx = _primary("pgrecovery-standby")
        try:
            standby = _standby_of(ctx)
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


# -- a standby that archives, then takes over ---------------------------------------------------------------------


def _archived_by(pg: LocalCluster, wal: str, timeout: float = 120) -> None:
    """Wait until ``pg``'s archiver has archived ``wal`` (or a later file), with no failure on the way."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last, failed = pg.query("select last_archived_wal, failed_count from pg_stat_archiver")[0]
        assert failed == 0, f"{pg.data_dir}: archive_command failed: {pg.log_tail()}"
        if last is not None and last >= wal:
            return
        time.sleep(0.1)
    raise AssertionError(f"{pg.data_dir} did not archive {wal} in time")


@pytest.mark.parametrize("number", MAJORS)
def test_a_standby_archiving_too_then_promoted_loses_nothing(number: int) -> None:
    """On each major: a standby with ``archive_mode = always`` archives the WAL it receives into the primary's
    repository beside it (the same files: each stored once, no conflict, no failed call on either side). Then the
    primary goes and the standby is promoted: it archives its new timeline (history file, segments, and timeline
    1's last segment as ``.partial``), and a recovery from a backup the old primary took, to the latest point,
    follows the switch to timeline 2 and matches the new primary row for row."""
    with major_or_skip(number).active():
        ctx = _primary("pgrecovery-failover")
        try:
            backup = BaseBackup(dbname=ctx.pg.conninfo()).run(ctx.repo)
            standby = _standby_of(ctx, archive_mode="always")
            _insert(ctx.pg, 5001, 2000)
            switched = wait_archived(ctx.pg)
            _caught_up(ctx.pg, standby)
            _archived_by(standby, switched)
            archiver = WalArchiver(ctx.repo)
            objects = archiver.index(1)
            assert switched in objects
            twice = {name: len(objs) for name, objs in objects.items() if len(objs) > 1}
            assert not twice, f"WAL stored twice by the two archivers: {twice}"

            ctx.pg.stop()  # the primary is gone
            standby.promote()
            assert standby.query("select pg_is_in_recovery()")[0] == (False,)
            _insert(standby, 7001, 2000)
            standby.execute("delete from t where i % 7 = 0")
            want = standby.query(FINGERPRINT)[0]
            _archived_by(standby, wait_archived(standby))
            names = set(archiver.index(2)) | set(archiver.index(1))
            assert "00000002.history" in names, sorted(names)
            assert any(wn.is_partial(n) for n in names), "timeline 1's last segment was not archived as .partial"
            report = archiver.verify(check_digests=True)
            assert report.ok, report.to_dict()

            restored = _restored({"ctx": ctx}, RecoveryPlan(ctx.repo, RecoveryTarget.latest(), backup_id=backup.id))
            try:
                assert restored.query(FINGERPRINT)[0] == want
                (current,) = restored.query("select pg_walfile_name(pg_current_wal_lsn())")[0]
                assert int(current[:8], 16) == 3  # followed timeline 2, then was promoted itself
            finally:
                restored.stop()
        finally:
            ctx.close()
