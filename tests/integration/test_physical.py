"""Base backups on real clusters: incremental chains, timelines, killed backups, the stream method, drills."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pgtesting import FINGERPRINT, Archiving, archiving_fixture
from pgtesting import owned_tmpdir as _owned_tmpdir
from pgtesting import wait_archived as _wait_archived

from pgrecovery import (
    BaseBackup,
    ConfigurationError,
    LocalCluster,
    RecoveryPlan,
    RecoveryTarget,
    Repository,
    Verifier,
)
from pgrecovery.catalog import leftovers

# a fresh cluster archiving into its own repository for each test (these tests change timelines)
archiving = archiving_fixture("pgrecovery-phys")


def _insert(pg: LocalCluster, start: int, count: int) -> None:
    pg.execute(f"insert into t select i, md5(i::text) from generate_series({start}, {start + count - 1}) i")


def test_incremental_chain_restores_equal_and_stores_less(archiving: Archiving) -> None:
    pg, repo = archiving.pg, archiving.repo
    _insert(pg, 1, 20000)
    full = BaseBackup(dbname=pg.conninfo()).run(repo)
    _insert(pg, 20001, 100)
    inc1 = BaseBackup(dbname=pg.conninfo(), parent="latest").run(repo)
    pg.execute("update t set note = 'changed' where i <= 10")
    inc2 = BaseBackup(dbname=pg.conninfo(), parent=inc1.id).run(repo)
    want = pg.query(FINGERPRINT)[0]
    _wait_archived(pg)

    assert inc1.physical is not None
    assert inc2.physical is not None
    assert inc1.physical.parent == full.id
    assert inc2.physical.parent == inc1.id
    assert inc2.size < full.size / 2  # unchanged files are referenced, not stored again
    sources = {m.source for m in inc2.physical.members}
    assert full.id in sources  # the chain reaches back to the full backup

    result = RecoveryPlan(repo, RecoveryTarget.immediate(), backup_id=inc2.id).run(
        archiving.pgdata(), settings={"archive_mode": "off"}
    )
    restored = LocalCluster(data_dir=archiving.made[-1] / "data", port=result.port)
    assert restored.query(FINGERPRINT)[0] == want
    restored.stop()

    with pytest.raises(ConfigurationError, match=f"incremental backup.*{inc1.id}"):
        repo.delete_backup(full.id)
    assert [m.id for m in repo.backups("base")] == [full.id, inc1.id, inc2.id]
    gone = repo.delete_backup(full.id, with_dependents=True)
    assert [m.id for m in gone] == [inc2.id, inc1.id, full.id]
    assert repo.backups("base") == []


def test_two_recoveries_in_a_row_follow_the_new_timeline(archiving: Archiving) -> None:
    """Recover, promote (timeline 2, archived into the same repository), write more, recover again on it."""
    pg, repo = archiving.pg, archiving.repo
    _insert(pg, 1, 100)
    BaseBackup(dbname=pg.conninfo()).run(repo)
    _insert(pg, 101, 100)
    (mark,) = pg.query("select clock_timestamp()")[0]
    time.sleep(0.2)
    _insert(pg, 201, 100)  # the "mistake" recovery goes back before
    _wait_archived(pg)
    pg.stop()

    # the replacement server archives its new timeline (timeline 2) into the same repository
    first = RecoveryPlan(repo, RecoveryTarget.time(mark)).run(archiving.pgdata(), archive=True)
    assert first.timeline == 2
    recovered = first.cluster
    assert recovered.query("select count(*), max(i) from t")[0] == (200, 200)
    _insert(recovered, 1001, 50)
    (mark2,) = recovered.query("select clock_timestamp()")[0]
    time.sleep(0.2)
    _insert(recovered, 2001, 50)
    _wait_archived(recovered)
    recovered.stop()

    second = RecoveryPlan(repo, RecoveryTarget.time(mark2)).run(archiving.pgdata(), settings={"archive_mode": "off"})
    assert second.timeline == 3
    again = LocalCluster(data_dir=archiving.made[-1] / "data", port=second.port)
    assert again.query("select count(*), max(i) from t")[0] == (250, 1050)
    again.stop()


def test_killed_base_backup_is_not_listed_and_ends_backup_mode(archiving: Archiving) -> None:
    pg, url = archiving.pg, archiving.url
    pg.execute(
        "create table big as select i, md5(i::text) || md5((i * 3)::text) as t from generate_series(1, 400000) i"
    )
    root = Path(url.removeprefix("file://"))
    code = (
        "import sys; from pgrecovery import BaseBackup, Repository; "
        f"BaseBackup(dbname=sys.argv[1], level=19, workers=1).run(Repository({url!r}))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, pg.conninfo()])
    try:
        deadline = time.monotonic() + 60
        # a bundle's temporary file exists once the files are being read (libzstd may hold its first output back)
        while not any(root.glob("backups/*/data/.*.tmp")):
            assert time.monotonic() < deadline, "the backup never started writing"
            assert proc.poll() is None, "the backup finished before it could be interrupted"
            time.sleep(0.02)
        backends = pg.query(
            "select pid from pg_stat_activity where backend_type = 'client backend' and pid <> pg_backend_pid()"
        )
        assert backends, "the session holding the backup open should be visible"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    # the session that held the backup open goes away with its client, and the server aborts the backup with it
    deadline = time.monotonic() + 30
    while pg.query("select 1 from pg_stat_activity where pid = %s", (backends[0][0],)):
        assert time.monotonic() < deadline, "the backup session outlived its client"
        time.sleep(0.05)
    repo = archiving.repo
    assert repo.backups("base") == []
    assert [x.reason for x in leftovers(repo)] == ["interrupted (its process is gone)"]
    m = BaseBackup(dbname=pg.conninfo()).run(repo)
    assert [b.id for b in repo.backups("base")] == [m.id]


def test_stream_method_restores_and_verifies(archiving: Archiving) -> None:
    pg, repo = archiving.pg, archiving.repo
    _insert(pg, 1, 5000)
    m = BaseBackup(dbname=pg.conninfo(), method="stream").run(repo)
    assert m.physical is not None
    assert m.physical.method == "stream"
    _insert(pg, 5001, 10)
    want = pg.query(FINGERPRINT)[0]
    _wait_archived(pg)
    result = RecoveryPlan(repo, RecoveryTarget.latest()).run(archiving.pgdata(), settings={"archive_mode": "off"})
    restored = LocalCluster(data_dir=archiving.made[-1] / "data", port=result.port)
    assert restored.query(FINGERPRINT)[0] == want
    restored.stop()

    report = Verifier(repo).verify(m.id, drill=True)
    assert report.ok, report.to_dict()
    assert [c.name for c in report.checks] == ["checksums", "restore-drill", "row-counts"]
    assert "pg_verifybackup: files match" in report.checks[1].detail
    assert report.checks[2].status == "warn"  # the source has more rows than at the backup: a warning, not a failure


def test_damaged_bundle_fails_verification(archiving: Archiving) -> None:
    pg, repo = archiving.pg, archiving.repo
    _insert(pg, 1, 5000)
    m = BaseBackup(dbname=pg.conninfo()).run(repo)
    bundle = next(f for f in m.files if f.role.startswith("bundle-"))
    path = Path(repo.root) / "backups" / m.id / bundle.path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    report = Verifier(repo).verify(m.id, drill=True)
    assert not report.ok
    checks = {c.name: c for c in report.checks}
    assert checks["checksums"].status == "fail"
    assert bundle.path in checks["checksums"].detail
    assert checks["restore-drill"].status == "skip"


def test_base_backup_without_archiving_is_refused(pg: LocalCluster, repo: Repository) -> None:
    with pytest.raises(ConfigurationError, match="need WAL archiving"):
        BaseBackup(dbname=pg.conninfo()).run(repo)
    assert repo.backups() == []


def test_wal_cleanup_keeps_what_the_oldest_backup_needs(archiving: Archiving) -> None:
    from pgrecovery.wal.archiver import WalArchiver

    pg, repo = archiving.pg, archiving.repo
    _insert(pg, 1, 1000)
    _wait_archived(pg)  # WAL from before the backup: cleanup may remove it
    m = BaseBackup(dbname=pg.conninfo()).run(repo)
    _insert(pg, 1001, 1000)
    _wait_archived(pg)
    assert m.physical is not None
    archiver = WalArchiver(repo)
    newest = max(n for n in archiver.list_archived()[1] if len(n) == 24)
    with pytest.raises(ConfigurationError, match=f"base backup {m.id} needs"):
        archiver.cleanup(newest)
    removed = archiver.cleanup()
    assert removed
    assert all(n[:24] < m.physical.start_wal for n in removed)
    RecoveryPlan(repo, RecoveryTarget.latest()).validate()  # everything the backup needs is still there


def test_delta_restore_rewrites_only_what_differs(archiving: Archiving) -> None:
    pg, repo = archiving.pg, archiving.repo
    _insert(pg, 1, 20000)
    m = BaseBackup(dbname=pg.conninfo()).run(repo)
    want = pg.query(FINGERPRINT)[0]
    (relfile,) = pg.query("select pg_relation_filepath('t')")[0]
    _wait_archived(pg)
    plan = RecoveryPlan(repo, RecoveryTarget.immediate(), backup_id=m.id)
    pgdata = plan.restore(archiving.pgdata())

    with pytest.raises(ConfigurationError, match="not empty"):
        plan.restore(pgdata)
    damaged, untouched, stray = pgdata / relfile, pgdata / "PG_VERSION", pgdata / "base" / "stray-file"
    with open(damaged, "r+b") as f:
        f.seek(8192 + 100)
        f.write(b"\xff" * 16)
    stray.write_text("not from the backup")
    inode = untouched.stat().st_ino

    result = plan.run(pgdata, delta=True, settings={"archive_mode": "off"})
    assert untouched.stat().st_ino == inode  # identical files are left alone
    assert not stray.exists()
    restored = LocalCluster(data_dir=pgdata, port=result.port)
    assert restored.query(FINGERPRINT)[0] == want
    restored.stop()


def test_tablespace_is_backed_up_and_restored_to_a_new_place(archiving: Archiving) -> None:
    pg, repo = archiving.pg, archiving.repo
    space = _owned_tmpdir("pgrecovery-space-")
    archiving.made.append(space)
    pg.execute(f"create tablespace elsewhere location '{space}'")
    pg.execute("create table far (i int) tablespace elsewhere")
    pg.execute("insert into far select generate_series(1, 5000)")
    m = BaseBackup(dbname=pg.conninfo()).run(repo)
    assert m.physical is not None
    [(oid, location)] = m.physical.tablespaces.items()
    assert location == str(space)
    assert any(x.path.startswith(f"tblspc/{oid}/") for x in m.physical.members)
    _wait_archived(pg)

    plan = RecoveryPlan(repo, RecoveryTarget.immediate(), backup_id=m.id)
    target = archiving.pgdata()
    with pytest.raises(ConfigurationError, match="not empty"):
        plan.restore(target)  # the original location is in use: it must be remapped
    moved = _owned_tmpdir("pgrecovery-space-moved-")
    archiving.made.append(moved)
    shutil.rmtree(target, ignore_errors=True)
    plan.restore(target, tablespace_map={oid: str(moved)}, settings={"archive_mode": "off"})
    result = plan.run(target, restore=False)
    restored = LocalCluster(data_dir=target, port=result.port)
    assert restored.query("select count(*), sum(i) from far")[0] == (5000, 12502500)
    assert restored.query("select pg_tablespace_location(%s::oid)", (int(oid),))[0][0] == str(moved)
    restored.stop()
