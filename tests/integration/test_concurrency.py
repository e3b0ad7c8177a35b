"""Concurrent operations on one repository: each pair is either safe or refused with a message naming the holder.

- two logical backups at once: distinct ids, both verify;
- two base backups at once on one server (PostgreSQL allows concurrent non-exclusive backups): both restore;
- expire (and clean) while a base backup is in progress: the backup is untouched, its WAL kept, it verifies;
- expire or delete while an incremental backup is in progress: what it takes files from is kept, or the delete
  is refused; a parent removed behind its back makes the backup fail instead of completing broken;
- two archivers: the same segment twice at once, and different segments at once (each archiving ahead).

A base backup is held "in progress" in this process by a progress callback that waits on an event, so that the
other operation (a real CLI process) runs while the server is in backup mode.

Each story is a helper taking the cluster and the repository (and what else varies), called here on ``file://`` and
by tests/storage/test_concurrency_stores.py on the object stores, with the same checks.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pgtesting import archive_settings, pg_substitute
from pgtesting import owned_tmpdir as _owned_tmpdir
from pgtesting import wait_archived as _wait_archived
from test_crash_sweep import FINGERPRINT, Checker, _fake_pgdata, cli, run

from pgrecovery import (
    BackupError,
    BaseBackup,
    LocalCluster,
    LogicalBackup,
    RecoveryPlan,
    RecoveryTarget,
    Repository,
    Verifier,
)
from pgrecovery import _walnames as wn
from pgrecovery.catalog import claim_backup_id, leftovers
from pgrecovery.copies import copy_repository
from pgrecovery.physical import _bundles as physical
from pgrecovery.wal.archiver import WalArchiver, archive_command

_counter = itertools.count()


def fill(pg: LocalCluster) -> None:
    """The tests' data: table ``t`` (see FINGERPRINT), and ``noise`` to make WAL with."""
    pg.execute(
        "create table t (i int primary key, pad text not null);"
        "insert into t select i, md5(i::text) || md5((i * 7)::text) from generate_series(1, 20000) i;"
        "create table noise (i int)"
    )


def archive_into(cluster: LocalCluster, url: str) -> None:
    """Make the cluster archive into ``url`` from now on (archive_command switched by a reload)."""
    cluster.configure(archive_command=archive_command(url))
    cluster.reload()
    cluster.execute("insert into noise select generate_series(1, 1000)")
    _wait_archived(cluster)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    pg = LocalCluster.temporary(settings=archive_settings(command="", fsync=False))
    try:
        pg.start()
        fill(pg)
        yield pg
    finally:
        pg.destroy()
        for root in _roots:  # only now: the archiver may still push into the previous repository for a moment
            shutil.rmtree(root, ignore_errors=True)


_roots: list[Path] = []


@pytest.fixture
def repo(cluster: LocalCluster) -> Repository:
    """A fresh repository that the cluster archives into from now on (archive_command switched by a reload)."""
    root = _owned_tmpdir("pgrecovery-conc-")
    _roots.append(root)
    url = f"file://{root}"
    archive_into(cluster, url)
    return Repository(url)


def _together(*cmds: list[str], cwd: Path | None = None) -> list[subprocess.CompletedProcess[str]]:
    """Start every command, then wait for all: they run at the same time."""
    procs = [subprocess.Popen(c, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cmds]
    done = []
    for c, p in zip(cmds, procs, strict=True):
        out, err = p.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(c, p.returncode, out, err))
    return done


def _restored_fingerprint(repo: Repository, backup_id: str) -> tuple[Any, ...]:
    """Restore a base backup to consistency in a scratch directory and fingerprint table t."""
    base = _owned_tmpdir("pgrecovery-conc-restore-")
    try:
        plan = RecoveryPlan(repo, RecoveryTarget.immediate(), backup_id=backup_id)
        result = plan.run(base / "data", settings={"archive_mode": "off"})
        restored = LocalCluster(data_dir=base / "data", port=result.port)
        try:
            return tuple(restored.query(FINGERPRINT)[0])
        finally:
            restored.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


class Held:
    """A base backup taken in a thread of this process, held in progress (the server in backup mode, its first
    data file being read) until released."""

    def __init__(
        self, cluster: LocalCluster, repo: Repository, monkeypatch: pytest.MonkeyPatch, **options: Any
    ) -> None:
        self.entered, self.gate = threading.Event(), threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        add_file = physical._add_file

        def held_add_file(*args: Any) -> Any:
            self.entered.set()
            self.gate.wait(120)
            return add_file(*args)

        monkeypatch.setattr(physical, "_add_file", held_add_file)

        def work() -> None:
            try:
                self.result = BaseBackup(dbname=cluster.conninfo(), **options).run(repo)
            except BaseException as e:  # noqa: BLE001 - handed to the test
                self.error = e

        self.thread = threading.Thread(target=work)
        self.thread.start()
        assert self.entered.wait(60), "the base backup did not start"
        [self.leftover] = leftovers(repo)
        assert self.leftover.reason == "in progress"

    def files(self, repo: Repository) -> list[str]:
        return repo.list_keys(f"backups/{self.leftover.id}")

    def finish(self) -> Any:
        self.gate.set()
        self.thread.join(300)
        if self.error is not None:
            raise self.error
        return self.result


# -- backups ----------------------------------------------------------------------------------------------------


def two_logical_backups_at_once(cluster: LocalCluster, repo: Repository) -> None:
    """Three at once: distinct ids, all listed, each verifies, nothing left over."""
    cmd = cli(repo.url, "backup", "logical", "--dbname", cluster.conninfo(), "--json")
    results = _together(cmd, cmd, cmd)
    assert [r.returncode for r in results] == [0, 0, 0], [r.stderr for r in results]
    ids = [json.loads(r.stdout)["id"] for r in results]
    assert len(set(ids)) == 3
    assert sorted(m.id for m in repo.backups()) == sorted(ids)
    for backup_id in ids:
        Verifier(repo).verify(backup_id).raise_for_failure()
    assert not leftovers(repo)


def test_two_logical_backups_at_once_get_distinct_ids_and_both_verify(cluster: LocalCluster, repo: Repository) -> None:
    two_logical_backups_at_once(cluster, repo)


def ids_claimed_in_the_same_second(repo: Repository) -> None:
    """Eight threads claim an id for the same second at once: each gets its own."""
    now = datetime.now(UTC)
    claimed: list[str] = []
    lock = threading.Lock()

    def claim() -> None:
        backup_id = claim_backup_id(repo, "logical", now)
        with lock:
            claimed.append(backup_id)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(set(claimed)) == 8
    assert {x.id for x in leftovers(repo)} == set(claimed)


def test_ids_claimed_in_the_same_second_are_distinct(repo: Repository) -> None:
    ids_claimed_in_the_same_second(repo)


def two_base_backups_at_once(cluster: LocalCluster, repo: Repository) -> None:
    """On one server (PostgreSQL allows concurrent non-exclusive backups): both listed, both restore exactly."""
    cmd = cli(repo.url, "backup", "base", "--dbname", cluster.conninfo(), "--json")
    results = _together(cmd, cmd)
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    ids = [json.loads(r.stdout)["id"] for r in results]
    assert len(set(ids)) == 2
    checker = Checker(repo)
    assert sorted(checker.listed_backups()) == sorted(ids)
    source = tuple(cluster.query(FINGERPRINT)[0])
    for backup_id in ids:
        assert _restored_fingerprint(repo, backup_id) == source
    assert not (cluster.data_dir / "backup_label").exists()


def test_two_base_backups_at_once_on_one_server_both_restore(cluster: LocalCluster, repo: Repository) -> None:
    two_base_backups_at_once(cluster, repo)


def expire_and_clean_during_a_base_backup(
    cluster: LocalCluster, repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`clean` removes nothing of the backup in progress, `expire` only the old backup; the held backup then
    completes with its WAL and passes a verify drill."""
    old = BaseBackup(dbname=cluster.conninfo()).run(repo)
    newer = BaseBackup(dbname=cluster.conninfo()).run(repo)
    held = Held(cluster, repo, monkeypatch)
    try:
        files = held.files(repo)
        cleaned = run(cli(repo.url, "clean", "--json")).check()
        assert json.loads(cleaned.out)["removed"] == []
        listed = run(cli(repo.url, "list", "--incomplete", "--json")).check()
        assert [(x["id"], x["reason"]) for x in json.loads(listed.out)["incomplete"]] == [
            (held.leftover.id, "in progress")
        ]
        res = run(cli(repo.url, "expire", "--keep-last", "1", "--json")).check()
        assert json.loads(res.out)["deleted"] == [old.id]
        assert held.files(repo) == files  # untouched
    finally:
        m = held.finish()
    assert [b.id for b in repo.backups()] == [newer.id, m.id]
    assert m.physical is not None
    assert not WalArchiver(repo).missing(m.physical.start_wal, m.physical.stop_wal)
    Verifier(repo).verify(m.id, drill=True).raise_for_failure()


def test_expire_and_clean_during_a_base_backup_leave_it_alone(
    cluster: LocalCluster, repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    expire_and_clean_during_a_base_backup(cluster, repo, monkeypatch)


def expire_during_an_incremental_backup(
    cluster: LocalCluster, repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Expire keeps the parent of an incremental backup in progress, and (once it is complete) because of it.

    Regression: expire used to delete the parent of an incremental backup in progress; the backup then
    completed, was listed and passed verification, but could not be restored."""
    parent = BaseBackup(dbname=cluster.conninfo()).run(repo)
    newest = BaseBackup(dbname=cluster.conninfo()).run(repo)
    held = Held(cluster, repo, monkeypatch, parent=parent.id)
    assert held.leftover.needs == (parent.id,)
    try:
        res = run(cli(repo.url, "expire", "--keep-last", "1", "--json")).check()
        plan = json.loads(res.out)
        assert plan["deleted"] == []
        [kept] = [d for d in plan["kept"] if d["id"] == parent.id]
        assert f"needed by backup {held.leftover.id}, in progress" in kept["reasons"]
    finally:
        m = held.finish()
    assert [b.id for b in repo.backups()] == [parent.id, newest.id, m.id]
    Verifier(repo).verify(m.id, drill=True).raise_for_failure()
    # once it is complete, the next expire keeps its parent because of it, as for any incremental backup
    res = run(cli(repo.url, "expire", "--keep-last", "1", "--json")).check()
    plan = json.loads(res.out)
    assert plan["deleted"] == []
    [kept] = [d for d in plan["kept"] if d["id"] == parent.id]
    assert kept["reasons"] == [f"needed by incremental backup {m.id}"]
    assert _restored_fingerprint(repo, m.id) == tuple(cluster.query(FINGERPRINT)[0])


def test_expire_during_an_incremental_backup_keeps_what_it_builds_on(
    cluster: LocalCluster, repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    expire_during_an_incremental_backup(cluster, repo, monkeypatch)


def delete_of_a_parent_during_an_incremental_backup(
    cluster: LocalCluster, repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused, naming the backup in progress; the incremental backup then completes and verifies."""
    parent = BaseBackup(dbname=cluster.conninfo()).run(repo)
    held = Held(cluster, repo, monkeypatch, parent=parent.id)
    try:
        res = run(cli(repo.url, "delete", parent.id))
        assert res.code == 2
        assert held.leftover.id in res.err
        assert "in progress" in res.err
        assert "wait until it has finished" in res.err
    finally:
        m = held.finish()
    Verifier(repo).verify(m.id).raise_for_failure()


def test_delete_of_a_parent_during_an_incremental_backup_is_refused(
    cluster: LocalCluster, repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    delete_of_a_parent_during_an_incremental_backup(cluster, repo, monkeypatch)


def parent_vanished_during_an_incremental_backup(
    cluster: LocalCluster, repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An expire that scanned before the backup's claim was visible still unlists the parent: the backup must
    notice at its end and fail (nothing listed), not complete on files that are gone."""
    parent = BaseBackup(dbname=cluster.conninfo()).run(repo)
    held = Held(cluster, repo, monkeypatch, parent=parent.id)
    repo.put_bytes(f"backups/{parent.id}/expired.json", b"{}")  # what expire does first, then:
    repo.delete(f"backups/{parent.id}/manifest.json")
    with pytest.raises(BackupError, match=f"takes files from backup {parent.id}, which was deleted or expired"):
        held.finish()
    assert repo.backups() == []
    assert held.leftover.id not in {x.id for x in leftovers(repo)}


def test_an_incremental_backup_whose_parent_vanished_meanwhile_fails_instead_of_completing(
    cluster: LocalCluster, repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    parent_vanished_during_an_incremental_backup(cluster, repo, monkeypatch)


# -- the chain of an incremental backup --------------------------------------------------------------------------


def test_verify_fails_when_what_an_incremental_backup_builds_on_is_damaged_or_gone(
    cluster: LocalCluster, repo: Repository, tmp_path: Path
) -> None:
    """Regression: verify only checked the incremental backup's own bundles (a few hundred bytes)."""
    parent = BaseBackup(dbname=cluster.conninfo()).run(repo)
    inc = BaseBackup(dbname=cluster.conninfo(), parent=parent.id).run(repo)
    report = Verifier(repo).verify(inc.id)
    assert report.ok
    assert "file(s) it takes from earlier backups match theirs" in report.checks[0].detail
    bundle = next(f for f in parent.files if f.role.startswith("bundle"))
    path = Path(repo.root) / "backups" / parent.id / bundle.path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    report = Verifier(repo).verify(inc.id)
    assert not report.ok
    assert f"backups/{parent.id}/{bundle.path}" in report.failures[0].detail
    shutil.rmtree(Path(repo.root) / "backups" / parent.id)
    report = Verifier(repo).verify(inc.id)
    assert not report.ok
    assert f"backup {parent.id}, which holds files of backup {inc.id}, is not available" in report.failures[0].detail


def test_copying_an_incremental_backup_brings_what_it_builds_on(
    cluster: LocalCluster, repo: Repository, tmp_path: Path
) -> None:
    """Regression: `copy --backup <incremental>` copied it alone: listed in the copy, unrestorable there."""
    parent = BaseBackup(dbname=cluster.conninfo()).run(repo)
    BaseBackup(dbname=cluster.conninfo()).run(repo)
    inc = BaseBackup(dbname=cluster.conninfo(), parent=parent.id).run(repo)
    target = Repository(f"file://{tmp_path / 'copy'}")
    result = copy_repository(repo, target, backups=[inc.id])
    assert result.ok
    assert [m.id for m in target.backups()] == [parent.id, inc.id]
    Verifier(target).verify(inc.id).raise_for_failure()


# -- several copies, several expires -----------------------------------------------------------------------------


def two_copies_at_once(cluster: LocalCluster, repo: Repository, target: Repository) -> None:
    """Two `copy --to target` of the same repository at once: the target lists exactly the source's backups,
    each complete, with its WAL intact and nothing left over."""
    for _ in range(2):
        BaseBackup(dbname=cluster.conninfo()).run(repo)
    run(cli(repo.url, "backup", "logical", "--dbname", cluster.conninfo())).check()
    cmd = cli(repo.url, "copy", "--to", target.url, "--json")
    results = _together(cmd, cmd)
    assert [r.returncode for r in results] == [0, 0], [r.stdout + r.stderr for r in results]
    checker = Checker(target)
    assert checker.listed_backups() == [m.id for m in repo.backups()]
    checker.no_corrupt_wal()
    checker.wal_verify_clean()
    assert not leftovers(target)


def test_two_copies_at_once_into_one_repository(cluster: LocalCluster, repo: Repository, tmp_path: Path) -> None:
    two_copies_at_once(cluster, repo, Repository(f"file://{tmp_path / 'copy'}"))


def two_expires_at_once(cluster: LocalCluster, repo: Repository) -> None:
    """Both succeed; only the newest backup remains, listed and as the only thing under backups/."""
    for _ in range(3):
        BaseBackup(dbname=cluster.conninfo()).run(repo)
    newest = repo.backups()[-1].id
    cmd = cli(repo.url, "expire", "--keep-last", "1", "--json")
    results = _together(cmd, cmd)
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    assert [m.id for m in repo.backups()] == [newest]
    assert repo.children("backups") == [newest]
    checker = Checker(repo)
    checker.listed_backups()
    checker.wal_verify_clean()


def test_two_expires_at_once(cluster: LocalCluster, repo: Repository) -> None:
    two_expires_at_once(cluster, repo)


@contextlib.contextmanager
def _cpu_hogs(count: int = 2) -> Iterator[None]:
    """Busy loops beside the test, one per core: the machine as loaded as the one where the race showed."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def test_two_expires_at_once_under_load(cluster: LocalCluster, repo: Repository) -> None:
    """The race once seen 1 time in 885 ('Directory not empty' when both expires delete the same backup), made
    likely: many backups to delete, both runs started together, every round with the cores busy."""
    db = cluster.create_database("expire_race")
    cluster.execute("create table r (i int)", dbname="expire_race")
    cmd = cli(repo.url, "expire", "--keep-last", "1", "--json")
    with _cpu_hogs():
        for _round in range(4):
            for _ in range(5):
                LogicalBackup(dbname=db).run(repo)
            newest = repo.backups()[-1].id
            results = _together(cmd, cmd)
            assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
            assert [m.id for m in repo.backups()] == [newest]
            assert sorted(p.name for p in (Path(repo.root) / "backups").iterdir()) == [newest]


# -- archivers --------------------------------------------------------------------------------------------------


def archived_segments(cluster: LocalCluster, repo: Repository, where: Path, count: int = 4) -> tuple[Path, list[str]]:
    """Make ``count`` segments' worth of WAL, wait until they are archived into ``repo``, and copy the last
    ``count`` archived segments into the new directory ``where``: (where, their names)."""
    for _ in range(count):
        cluster.execute("insert into noise select generate_series(1, 1000)")
        cluster.execute("select pg_switch_wal()")
    _wait_archived(cluster)
    archiver = WalArchiver(repo)
    names = sorted(n for t in archiver.timelines() for n in archiver.index(t) if wn.is_segment(n))
    names = names[-count:]
    where.mkdir()
    for name in names:
        (where / name).write_bytes(archiver.read(name))
    return where, names


def _push(url: str, name: str) -> list[str]:
    """archive_command for ``pg_wal/<name>``, as PostgreSQL runs it from the data directory."""
    return ["/bin/sh", "-c", pg_substitute(archive_command(url), f"pg_wal/{name}", name)]


def same_segment(names: list[str]) -> list[str]:
    return [names[0], names[0]]


def different_segments(names: list[str]) -> list[str]:
    """Each call archives the other .ready files ahead: both upload the same objects at the same time."""
    return [names[0], names[-1]]


def archive_rounds(
    workdir: Path,
    segments: tuple[Path, list[str]],
    pick: Callable[[list[str]], list[str]],
    new_repo: Callable[[], Repository],
    rounds: int = 4,
) -> None:
    """Each round: a data directory (under ``workdir``) with ``segments`` ready, archive_command run at once for
    each of ``pick(names)`` into a fresh repository (``new_repo``), then for every segment in turn, as the
    archiver goes on. Every acknowledged segment is stored once, with its digest; wal-verify is clean."""
    source, names = segments
    for n in range(rounds):
        data = _fake_pgdata(workdir / f"data{n}-{next(_counter)}", source, names)
        target = new_repo()
        results = _together(*[_push(target.url, name) for name in pick(names)], cwd=data)
        assert [r.returncode for r in results] == [0] * len(results), [r.stderr for r in results]
        checker = Checker(target)
        checker.wal_durable(set(pick(names)))
        checker.markers(data / "pgrecovery_spool")
        checker.no_corrupt_wal()
        for name in names:  # the archiver goes on: the others are answered by markers or pushed now
            r = subprocess.run(_push(target.url, name), cwd=data, capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
        checker.wal_durable(set(names))
        assert sum(len(objs) for objs in WalArchiver(target).index(1).values()) == len(names)
        checker.wal_verify_clean()


@pytest.fixture
def segments(cluster: LocalCluster, repo: Repository, tmp_path: Path) -> tuple[Path, list[str]]:
    return archived_segments(cluster, repo, tmp_path / "segments")


def _new_local_repo(tmp_path: Path) -> Callable[[], Repository]:
    return lambda: Repository(f"file://{tmp_path / f'repo-{next(_counter)}'}")


def test_two_archivers_push_the_same_segment_at_once(tmp_path: Path, segments: tuple[Path, list[str]]) -> None:
    archive_rounds(tmp_path, segments, same_segment, _new_local_repo(tmp_path))


def test_two_archivers_push_different_segments_at_once(tmp_path: Path, segments: tuple[Path, list[str]]) -> None:
    archive_rounds(tmp_path, segments, different_segments, _new_local_repo(tmp_path))
