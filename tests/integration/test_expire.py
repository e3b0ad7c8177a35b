"""`expire` on a real cluster: base backups (full and incremental) with archived WAL in a file:// repository;
what a policy keeps still recovers, to a point in time and in a verification drill."""

from __future__ import annotations

import time
from typing import Any

from pgtesting import FINGERPRINT, Archiving, archiving_fixture
from pgtesting import wait_archived as _wait_archived

from pgrecovery import (
    BaseBackup,
    LocalCluster,
    RecoveryPlan,
    RecoveryTarget,
    Repository,
    RetentionPolicy,
    Verifier,
    expire,
)
from pgrecovery.wal.archiver import WalArchiver

archiving = archiving_fixture("pgrecovery-expire")


def _insert(pg: LocalCluster, start: int, count: int, switch: bool = False) -> None:
    pg.execute(f"insert into t select i, md5(i::text) from generate_series({start}, {start + count - 1}) i")
    if switch:
        pg.execute("select pg_switch_wal()")


def _recover(ctx: Archiving, plan: RecoveryPlan) -> tuple[Any, ...]:
    pgdata = ctx.pgdata()
    result = plan.run(pgdata, settings={"archive_mode": "off"})
    restored = LocalCluster(data_dir=pgdata, port=result.port)
    try:
        return tuple(restored.query(FINGERPRINT)[0])
    finally:
        restored.stop()


def _archived(repo: Repository) -> list[str]:
    archiver = WalArchiver(repo)
    return sorted(n for t in archiver.timelines() for n in archiver.index(t))


def test_expire_keeps_the_newest_chain_and_its_wal_and_pitr_still_works(archiving: Archiving) -> None:
    pg, repo = archiving.pg, archiving.repo
    _insert(pg, 1, 5000, switch=True)
    full_a = BaseBackup(dbname=pg.conninfo()).run(repo)
    _insert(pg, 5001, 100, switch=True)
    inc_b = BaseBackup(dbname=pg.conninfo(), parent=full_a.id).run(repo)
    _insert(pg, 5101, 100, switch=True)
    full_c = BaseBackup(dbname=pg.conninfo()).run(repo)
    _insert(pg, 5201, 100)
    at_mark = pg.query(FINGERPRINT)[0]
    (mark,) = pg.query("select clock_timestamp()")[0]
    time.sleep(0.2)
    _insert(pg, 5301, 100, switch=True)  # after the mark: a PITR to the mark must not see these rows
    inc_d = BaseBackup(dbname=pg.conninfo(), parent=full_c.id).run(repo)
    _insert(pg, 5401, 100)
    final = pg.query(FINGERPRINT)[0]
    _wait_archived(pg)
    assert full_c.physical is not None
    before = _archived(repo)
    assert before[0] < full_c.physical.start_wal  # there is WAL from before the kept backups to expire

    dry = expire(repo, RetentionPolicy(keep_last=1), dry_run=True)
    assert [m.id for m in repo.backups()] == [full_a.id, inc_b.id, full_c.id, inc_d.id]
    assert _archived(repo) == before

    result = expire(repo, RetentionPolicy(keep_last=1))
    assert result.deleted == dry.deleted == (inc_b.id, full_a.id)
    assert result.wal_removed == dry.wal_removed
    assert [m.id for m in repo.backups()] == [full_c.id, inc_d.id]
    assert repo.children("backups") == [full_c.id, inc_d.id]
    assert result.plan.wal.keep_from == full_c.physical.start_wal
    left = _archived(repo)
    assert all(n >= full_c.physical.start_wal for n in left)
    assert sorted(set(before) - set(left)) == list(result.wal_removed)
    assert WalArchiver(repo).missing(full_c.physical.start_wal) == []  # continuous up to the newest segment

    # point-in-time recovery to the mark (from the kept full backup and its WAL), and to the end
    plan = RecoveryPlan(repo, RecoveryTarget.time(mark))
    assert plan.backup.id == full_c.id
    assert _recover(archiving, plan) == tuple(at_mark)
    latest = RecoveryPlan(repo, RecoveryTarget.latest())
    assert latest.backup.id == inc_d.id  # the incremental backup, whose files live partly in full_c
    assert _recover(archiving, latest) == tuple(final)
    report = Verifier(repo).verify(inc_d.id, drill=True)
    assert report.ok, report.to_dict()


def test_no_wal_policy_drops_wal_between_kept_backups_and_both_still_restore(archiving: Archiving) -> None:
    pg, repo = archiving.pg, archiving.repo
    _insert(pg, 1, 1000, switch=True)
    first = BaseBackup(dbname=pg.conninfo()).run(repo)
    _insert(pg, 1001, 1000, switch=True)
    second = BaseBackup(dbname=pg.conninfo()).run(repo)
    for n in range(4):  # WAL between the second and third backups that no-WAL retention does not keep
        _insert(pg, 2001 + 100 * n, 100, switch=True)
    third = BaseBackup(dbname=pg.conninfo()).run(repo)
    _insert(pg, 3001, 100)
    final = pg.query(FINGERPRINT)[0]
    _wait_archived(pg)
    assert second.physical is not None
    assert third.physical is not None
    archiver = WalArchiver(repo)
    assert archiver.missing(first.physical.start_wal if first.physical else "") == []

    result = expire(repo, RetentionPolicy(keep_last=2, wal=False))
    assert result.deleted == (first.id,)
    assert [m.id for m in repo.backups()] == [second.id, third.id]
    gap = archiver.missing(second.physical.start_wal, third.physical.start_wal)
    assert gap  # the WAL between the two kept backups is gone...
    assert all(second.physical.stop_wal < n < third.physical.start_wal for n in gap)
    assert archiver.missing(second.physical.start_wal, second.physical.stop_wal) == []  # ...but not their own
    assert archiver.missing(third.physical.start_wal) == []  # and everything after the newest one stays

    report = Verifier(repo).verify(second.id, drill=True)  # the older kept backup still becomes consistent
    assert report.ok, report.to_dict()
    assert _recover(archiving, RecoveryPlan(repo, RecoveryTarget.latest())) == tuple(final)
