"""WAL archiving against a real PostgreSQL: archive_command, restore_command semantics, continuity, cleanup.

One archiving cluster per module: it accumulates six finished segments with archiving off (so their ``.ready``
files pile up), then archive_command is switched on and one call archives them all ahead. Tests that damage the
archive work on copies of its repository.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pgtesting import MAJORS, Archiving, archive_settings, major_or_skip, owned_tmpdir, wait_archived, wal_workers

from pgrecovery import ChecksumMismatch, LocalCluster, Repository
from pgrecovery import _spool as spool_mod
from pgrecovery import _walnames as wn
from pgrecovery.cli.main import main
from pgrecovery.progress import Progress
from pgrecovery.wal.archiver import (
    ArchiverStatus,
    WalArchiver,
    WalConflict,
    archive_command,
    archiver_status,
    create_restore_point,
    restore_command,
)

SEGMENTS = 6
HEAVY = ("fsspec", "zstandard", "psycopg", "attrs")


@dataclass
class Archive:
    cluster: LocalCluster
    repo_dir: str
    url: str
    segments: list[str]  # every segment archived, oldest first
    before: ArchiverStatus  # pg_stat_archiver while archiving was off


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _wait(predicate: Callable[[], object], timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def archive() -> Iterator[Archive]:
    repo_dir = str(owned_tmpdir("pgrecovery-wal-"))
    url = f"file://{repo_dir}"
    # archive_command starts empty: with archive_mode on, the server keeps .ready files until a command is set.
    cluster = LocalCluster.temporary(settings=archive_settings(command="", archive_timeout=0))
    try:
        cluster.start()
        cluster.execute("create table t (i int, pad text)")
        names = []
        for _ in range(SEGMENTS):
            cluster.execute("insert into t select i, repeat('x', 100) from generate_series(1, 2000) i")
            names.append(cluster.query("select pg_walfile_name(pg_switch_wal())")[0][0])
        before = archiver_status(cluster.conninfo(), cluster.data_dir)
        # -v: the call that uploads says how many files it archived ahead (the server log keeps its stderr).
        cluster.configure(archive_command=archive_command(url).replace(" wal-push ", " wal-push -v "))
        cluster.reload()
        _wait(
            lambda: archiver_status(cluster.conninfo()).last_archived_wal == names[-1],
            what=f"{names[-1]} to be archived",
        )
        segments = wn.segment_range("000000010000000000000001", names[-1])
        assert len(segments) == SEGMENTS
        yield Archive(cluster=cluster, repo_dir=repo_dir, url=url, segments=segments, before=before)
    finally:
        cluster.destroy()
        shutil.rmtree(repo_dir, ignore_errors=True)


@pytest.fixture
def copy(archive: Archive, tmp_path: Path) -> Repository:
    """A private copy of the archive's repository, to damage freely."""
    shutil.copytree(archive.repo_dir, tmp_path / "repo")
    return Repository(f"file://{tmp_path / 'repo'}")


def _object_path(repo: Repository, name: str) -> Path:
    obj = WalArchiver(repo).find(name)
    assert obj is not None
    return Path(repo.path(obj.key))


# -- archive_command on a real server ---------------------------------------------------------------------------


def test_one_call_archives_the_ready_files_ahead(archive: Archive) -> None:
    assert archive.before.ready_count == SEGMENTS
    assert archive.before.archived_count == 0
    after = archiver_status(archive.cluster.conninfo(), archive.cluster.data_dir)
    assert after.archived_count == SEGMENTS
    assert after.failed_count == 0
    assert after.ready_count == 0
    assert after.last_archived_time is not None
    # The first call pushed every ready file and left a marker for each; the server's later calls hit them.
    assert archive.cluster.log_file is not None
    log = archive.cluster.log_file.read_text()
    assert f"wal-push: {archive.segments[0]} stored, ahead: {SEGMENTS - 1}" in log
    assert log.count(" stored, ahead: ") == 1
    markers = sorted(os.listdir(archive.cluster.data_dir / "pgrecovery_spool" / "archived"))
    assert markers == archive.segments
    assert os.stat(archive.cluster.data_dir / "pgrecovery_spool").st_mode & 0o777 == 0o700


def test_every_archived_segment_has_the_right_digest(archive: Archive, tmp_path: Path) -> None:
    archiver = WalArchiver(Repository(archive.url))
    assert archiver.list_archived() == {1: archive.segments}
    compared = 0
    for name in archive.segments:
        (obj,) = archiver.objects(name)
        assert obj.key == f"wal/00000001/{name}-{obj.sha256}.zst"
        dest = tmp_path / name
        assert archiver.fetch(name, dest, prefetch=False)
        assert _sha256(dest) == obj.sha256
        assert dest.stat().st_size == 16 * 1024 * 1024
        original = archive.cluster.data_dir / "pg_wal" / name
        if original.exists():
            assert _sha256(original) == obj.sha256
            compared += 1
    assert compared >= SEGMENTS - 1
    report = archiver.verify(check_digests=True)
    assert report.ok
    assert (report.first, report.last, report.count) == (archive.segments[0], archive.segments[-1], SEGMENTS)
    assert report.timelines == (1,)


def test_spool_hit_imports_nothing_heavy(archive: Archive) -> None:
    seg = archive.segments[-1]
    data = archive.cluster.data_dir
    assert (data / "pg_wal" / seg).exists()
    fast = [sys.executable, "-X", "importtime", "-S", spool_mod.__file__]
    plain = [sys.executable, "-X", "importtime", "-m", "pgrecovery"]
    for prefix in (fast, plain):
        res = subprocess.run(
            [*prefix, "wal-push", "--repo", archive.url, f"pg_wal/{seg}"], cwd=data, capture_output=True, text=True
        )
        assert res.returncode == 0, res.stderr[-2000:]
        imported = {line.split("|")[-1].strip().split(".")[0] for line in res.stderr.splitlines()}
        assert "import time:" in res.stderr  # the import log is there ...
        assert not imported & set(HEAVY), imported & set(HEAVY)  # ... and holds nothing heavy


def test_status_and_restore_point(archive: Archive, capsys: pytest.CaptureFixture[str]) -> None:
    lsn = create_restore_point(archive.cluster.conninfo(), "before-wal-tests")
    assert wn.parse_lsn(lsn) > 0
    args = ["archiver-status", "--json", "-d", archive.cluster.conninfo(), "--pgdata", str(archive.cluster.data_dir)]
    assert main(args) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["archived_count"] >= SEGMENTS
    assert status["ready_count"] == 0
    assert main(["restore-point", "second-point", "-d", archive.cluster.conninfo()]) == 0
    assert "second-point" in capsys.readouterr().out


# -- continuity -------------------------------------------------------------------------------------------------


def test_a_deleted_segment_is_reported_missing(
    archive: Archive, copy: Repository, capsys: pytest.CaptureFixture[str]
) -> None:
    gone = archive.segments[2]
    _object_path(copy, gone).unlink()
    archiver = WalArchiver(copy)
    report = archiver.verify()
    assert report.missing == (gone,)
    assert not report.ok
    assert report.count == SEGMENTS - 1
    assert archiver.missing(archive.segments[0]) == [gone]
    assert archiver.missing(archive.segments[3], archive.segments[5]) == []
    assert main(["wal-verify", "--repo", copy.url, "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["missing"] == [gone]


def test_continuity_follows_a_timeline_switch(archive: Archive, copy: Repository, tmp_path: Path) -> None:
    # Timeline 2 forked from 1 inside segment 4: segments 4 and 5 are read from timeline 2.
    pg_wal = tmp_path / "pg_wal"
    pg_wal.mkdir()
    history = pg_wal / "00000002.history"
    history.write_text("1\t0/4000060\tno recovery target specified\n")
    archiver = WalArchiver(copy, spool_dir=tmp_path / "spool")
    archiver.push(history)
    for segno in (4, 5):
        fork = pg_wal / wn.segment_name(2, segno)
        assert archiver.fetch(wn.segment_name(1, segno), fork, prefetch=False)
        archiver.push(fork)
    assert archiver.history(2) == [(1, "0/4000060", "no recovery target specified")]
    assert archiver.history(1) == []
    report = archiver.verify()
    assert report.ok
    assert (report.timeline, report.timelines, report.count) == (2, (1, 2), 5)
    assert report.last == "000000020000000000000005"
    assert archiver.missing(archive.segments[0], timeline=1) == []
    _object_path(copy, "000000020000000000000004").unlink()
    assert archiver.missing(archive.segments[0]) == ["000000020000000000000004"]
    assert archiver.missing(archive.segments[0], "000000020000000000000005") == ["000000020000000000000004"]


def test_cleanup_removes_only_older_segments(archive: Archive, copy: Repository, tmp_path: Path) -> None:
    history = tmp_path / "00000002.history"
    history.write_text("1\t0/4000060\tno recovery target specified\n")
    archiver = WalArchiver(copy, spool_dir=tmp_path / "spool")
    archiver.push(history)
    keep = archive.segments[3]
    assert archiver.cleanup(keep, dry_run=True) == archive.segments[:3]
    assert archiver.list_archived()[1] == archive.segments
    assert archiver.cleanup(keep) == archive.segments[:3]
    assert archiver.list_archived() == {1: archive.segments[3:], 2: ["00000002.history"]}
    assert archiver.cleanup(keep, timeline=2) == []
    assert main(["wal-cleanup", "--repo", copy.url, "--keep-from", archive.segments[5], "--dry-run"]) == 0
    assert archiver.list_archived()[1] == archive.segments[3:]


# -- push -------------------------------------------------------------------------------------------------------


def test_push_is_idempotent_and_refuses_different_content(
    archive: Archive, copy: Repository, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pg_wal = tmp_path / "pg_wal"
    pg_wal.mkdir()
    seg = archive.segments[1]
    path = pg_wal / seg
    archiver = WalArchiver(copy, spool_dir=tmp_path / "spool")
    assert archiver.fetch(seg, path, prefetch=False)
    assert archiver.push(path).outcome == "already"
    assert archiver.push(path).outcome == "spool"  # the marker from the first push
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WalConflict, match=f"{seg} is already archived with different content"):
        archiver.push(path)
    argv = ["wal-push", "--repo", copy.url, "--spool", str(tmp_path / "spool"), str(path)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"{seg} is already archived with different content" in err
    assert len(archiver.objects(seg)) == 1  # nothing was overwritten or added


def test_archive_ahead_from_ready_files(archive: Archive, copy: Repository, tmp_path: Path) -> None:
    src = WalArchiver(copy)
    pg_wal = tmp_path / "data" / "pg_wal"
    (pg_wal / "archive_status").mkdir(parents=True)
    names = [wn.segment_name(3, n) for n in range(1, 6)]  # a new timeline, so nothing is archived yet
    for segno, name in enumerate(names, 1):
        assert src.fetch(wn.segment_name(1, segno), pg_wal / name, prefetch=False)
        (pg_wal / "archive_status" / f"{name}.ready").touch()
    archiver = WalArchiver(copy, parallel=2)  # default spool: data/pgrecovery_spool
    first = archiver.push(pg_wal / names[0])
    assert first.outcome == "stored"
    assert sorted(first.ahead) == names[1:4]  # 2 x parallel - 1 files ahead
    assert archiver.list_archived(3) == {3: names[:4]}
    assert archiver.push(pg_wal / names[1]).outcome == "spool"
    assert archiver.push(pg_wal / names[4]).outcome == "stored"
    spool = tmp_path / "data" / "pgrecovery_spool"
    assert sorted(os.listdir(spool / "archived")) == names
    res = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "pgrecovery", "wal-push", "--repo", copy.url, f"pg_wal/{names[2]}"],
        cwd=tmp_path / "data",
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "fsspec" not in res.stderr
    # A recycled file (same name, new content) does not match its marker: it is read and refused, not skipped.
    (pg_wal / names[2]).write_bytes(b"\0" * 16 * 1024 * 1024)
    with pytest.raises(WalConflict):
        archiver.push(pg_wal / names[2])


# -- fetch ------------------------------------------------------------------------------------------------------


def test_corrupt_object_is_never_delivered(
    archive: Archive, copy: Repository, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seg = archive.segments[3]
    stored = _object_path(copy, seg)
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0x01
    stored.write_bytes(bytes(data))
    dest_dir = tmp_path / "pg_wal"
    dest_dir.mkdir()
    archiver = WalArchiver(copy, spool_dir=tmp_path / "spool")
    with pytest.raises(ChecksumMismatch, match=stored.name):
        archiver.fetch(seg, dest_dir / "RECOVERYXLOG", prefetch=False)
    assert os.listdir(dest_dir) == []
    argv = ["wal-fetch", "--repo", copy.url, "--spool", str(tmp_path / "spool"), "--no-prefetch"]
    assert main([*argv, seg, str(dest_dir / "RECOVERYXLOG")]) == 255
    assert "corrupt" in capsys.readouterr().err
    assert os.listdir(dest_dir) == []
    # Valid compressed data with the wrong content is caught by the digest in the name.
    from pgrecovery.codec import compress_bytes

    stored.write_bytes(compress_bytes(b"not the segment", "zstd"))
    with pytest.raises(ChecksumMismatch, match="does not match the sha256"):
        archiver.fetch(seg, dest_dir / "RECOVERYXLOG", prefetch=False)
    assert os.listdir(dest_dir) == []
    report = archiver.verify(check_digests=True)
    assert report.corrupt == (seg,)
    assert not report.ok


def test_a_missing_file_is_a_confirmed_miss(archive: Archive, tmp_path: Path) -> None:
    archiver = WalArchiver(Repository(archive.url), spool_dir=tmp_path / "spool")
    after_last = wn.next_segment(archive.segments[-1])
    assert archiver.fetch(after_last, tmp_path / "RECOVERYXLOG") is False
    assert archiver.fetch("00000002.history", tmp_path / "RECOVERYHISTORY") is False
    assert not (tmp_path / "RECOVERYXLOG").exists()
    argv = ["wal-fetch", "--repo", archive.url, "--spool", str(tmp_path / "spool"), "--no-prefetch"]
    assert main([*argv, after_last, str(tmp_path / "RECOVERYXLOG")]) == 1
    assert main([*argv, "pg_wal/RECOVERYXLOG", after_last]) == 255  # %p and %f swapped: stop, do not guess
    # A repository without any WAL is a wrong URL, not the end of the archive.
    assert main(["wal-fetch", "--repo", f"file://{tmp_path}/nowhere", after_last, str(tmp_path / "x")]) == 255


def test_prefetch_fills_the_spool_and_fetch_takes_from_it(archive: Archive, copy: Repository, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    dest_dir = tmp_path / "pg_wal"
    dest_dir.mkdir()
    archiver = WalArchiver(copy, spool_dir=spool, prefetch=3)
    first, *rest = archive.segments
    try:
        assert archiver.fetch(first, dest_dir / "RECOVERYXLOG")
        # The lock was taken before fetch returned and is held by the prefetcher: a second one is not started.
        assert spool_mod.prefetch_running(str(spool))
        assert not spool_mod.spawn_prefetch(first, str(spool), repo_url=copy.url)
        _wait(lambda: set(rest[:3]) <= set(spool_mod.prefetched(str(spool))), what="the prefetch")
        assert archiver.wait_for_prefetch(spool)
        assert spool_mod.prefetched(str(spool)) == rest[:3]
        digests = {}
        for name in rest[:3]:
            (obj,) = archiver.objects(name)
            digests[name] = obj.sha256
            assert _sha256(spool / "prefetch" / name) == obj.sha256
            Path(copy.path(obj.key)).unlink()  # from now on only the spool has it
        assert archiver.fetch(rest[0], dest_dir / "RECOVERYXLOG")
        assert _sha256(dest_dir / "RECOVERYXLOG") == digests[rest[0]]
        assert rest[0] not in spool_mod.prefetched(str(spool))
        argv = ["wal-fetch", "--repo", copy.url, "--spool", str(spool), rest[1], str(dest_dir / "RECOVERYXLOG")]
        assert main(argv) == 0
        assert _sha256(dest_dir / "RECOVERYXLOG") == digests[rest[1]]
        assert os.listdir(dest_dir) == ["RECOVERYXLOG"]
    finally:
        assert archiver.wait_for_prefetch(spool)
    # The prefetcher ran out of archived segments and stopped; nothing partial or empty is left behind.
    for name in os.listdir(spool / "prefetch"):
        assert not name.endswith(".tmp")
        if wn.is_wal_file(name):
            assert (spool / "prefetch" / name).stat().st_size == 16 * 1024 * 1024
    queued = spool_mod.prefetched(str(spool))
    assert queued
    assert sorted(archiver.clear_prefetched(spool)) == queued
    assert spool_mod.prefetched(str(spool)) == []


# -- restore_command on a real server ---------------------------------------------------------------------------


@pytest.mark.parametrize("number", MAJORS, ids=lambda n: f"pg{n}")
def test_restore_command_recovers_a_base_backup(number: int) -> None:
    """On every major: the server replays 12 segments, most of them staged in pg_wal by the prefetcher."""
    with major_or_skip(number).active():
        _recovers_a_base_backup()


def _recovers_a_base_backup() -> None:
    from pgrecovery import pgtools
    from pgrecovery.cluster import default_run_as

    ctx = Archiving("pgrecovery-wal", settings={"archive_timeout": 0})
    source, url = ctx.pg, ctx.url
    target_base = str(ctx.pgdata().parent)
    try:
        ctx.start(table="create table t (i int)")
        basebackup = pgtools.find_tool("pg_basebackup")
        cmd = [str(basebackup.path), "-D", f"{target_base}/data", "-X", "none", "-c", "fast", "-d", source.conninfo()]
        pgtools.run(cmd, run_as=default_run_as(), cwd="/")
        for _ in range(12):
            source.execute("insert into t select generate_series(1, 5000)")
            last = source.query("select pg_walfile_name(pg_switch_wal())")[0][0]
        rows = source.query("select count(*) from t")[0][0]
        _wait(lambda: archiver_status(source.conninfo()).last_archived_wal == last, what=f"{last} to be archived")
        restored = LocalCluster(data_dir=Path(target_base) / "data", log_file=Path(target_base) / "log")
        restored.configure(restore_command=restore_command(url), archive_mode="off")
        signal = restored.data_dir / "recovery.signal"
        signal.touch()
        if os.getuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(signal, pw.pw_uid, pw.pw_gid)
        restored.start()
        try:
            _wait(lambda: not restored.query("select pg_is_in_recovery()")[0][0], what="the end of recovery")
            assert restored.query("select count(*) from t")[0][0] == rows == 60000
            assert restored.query("select timeline_id from pg_control_checkpoint()")[0][0] == 2
            log = (Path(target_base) / "log").read_text()
            assert "FATAL" not in log
            # prefetched segments were staged in pg_wal, and the server read them there: fewer were restored
            # through restore_command than it replayed (2 .. the last: 13)
            restored_by_command = set(re.findall(r'restored log file "([0-9A-F]{24})" from archive', log))
            staged = set((restored.data_dir / "pgrecovery_spool" / "prefetch" / ".taken").read_text().split())
            assert staged
            assert len(restored_by_command) < 13
            assert restored_by_command | staged <= set(wn.segment_range(wn.segment_name(1, 2), last))
        finally:
            restored.stop()
        queue = restored.data_dir / "pgrecovery_spool" / "prefetch"
        assert (queue / ".wanted").read_text().strip() == last  # restore_command asked the prefetcher to work ahead
        assert WalArchiver(Repository(url)).wait_for_prefetch(queue.parent)
    finally:
        ctx.close()


@pytest.mark.parametrize("number", MAJORS, ids=lambda n: f"pg{n}")
def test_a_recovery_starts_its_wal_worker_before_the_server(number: int) -> None:
    """On every major: RecoveryPlan.run starts the WAL worker while the base backup is still being restored,
    prefetching from the backup's first segment, and the recovered data equals the source's. A data directory
    prepared with a restore_command of the caller's gets no worker (nor a spool) from run()."""
    with major_or_skip(number).active():
        _worker_before_the_server()


def _worker_before_the_server() -> None:
    from pgrecovery import BaseBackup, RecoveryPlan

    ctx = Archiving("pgrecovery-warm", settings={"archive_timeout": 0})
    try:
        ctx.start()
        base = BaseBackup(dbname=ctx.pg.conninfo()).run(ctx.repo)
        assert base.physical is not None
        for n in range(8):
            ctx.pg.execute(f"insert into t select g, 'round {n}' from generate_series({n * 5000}, {n * 5000 + 4999}) g")
            ctx.pg.query("select pg_switch_wal()")
        wait_archived(ctx.pg)
        source = ctx.pg.query("select i, note from t order by i")
        plan = RecoveryPlan(ctx.repo)

        pgdata = ctx.pgdata()
        during: list[list[int]] = []  # the WAL workers running at the restore's first progress event

        def restoring(event: Progress) -> None:
            if event.operation == "restore" and not during:
                during.append(wal_workers(pgdata.parent))

        with plan.run(pgdata, record_incident=False, progress=restoring) as result:
            assert during, "no progress from the restore"
            assert during[0], "no WAL worker while the base backup was being restored"
            assert result.state == "promoted"
            assert result.cluster.query("select i, note from t order by i") == source
            taken = (pgdata / "pgrecovery_spool" / "prefetch" / ".taken").read_text().split()
            log = pgdata.with_name(pgdata.name + ".log").read_text(errors="replace")
        assert "FATAL" not in log
        # the backup's first segment was downloaded and staged before the server asked for it: read from pg_wal
        assert base.physical.start_wal in taken
        assert f'restored log file "{base.physical.start_wal}"' not in log
        _wait(lambda: wal_workers(pgdata.parent) == [], what="the WAL worker to leave with its server")

        # the caller's own restore_command: run() starts no worker for it
        floor = ctx.pgdata()
        plan.restore(floor, settings={"restore_command": "false"})
        for name in wn.segment_range(base.physical.start_wal, base.physical.stop_wal):
            WalArchiver(ctx.repo).fetch(name, str(floor / "pg_wal" / name), prefetch=False)
        for path in (floor / "pg_wal").iterdir():
            shutil.chown(path, *_owner(floor))
        with plan.run(floor, restore=False, record_incident=False) as again:
            assert again.cluster.query("select count(*) from t")[0][0] <= len(source)
        assert not (floor / "pgrecovery_spool").exists()
    finally:
        ctx.close()


def test_a_restore_that_fails_stops_the_worker_it_started(monkeypatch: pytest.MonkeyPatch) -> None:
    """RecoveryPlan.run starts the WAL worker as soon as the backup's directories exist; a restore that fails
    after that (a byte of a bundle changed in the repository) stops it before removing what it wrote: no worker
    is left writing into a directory that is gone, and the directory is not there."""
    from pgrecovery import BaseBackup, PgRecoveryError, RecoveryPlan
    from pgrecovery.recovery import run as run_mod

    started: list[object] = []
    start = run_mod.EarlyWorker.start

    def recorded(self: run_mod.EarlyWorker, *args: object, **kwargs: object) -> None:
        start(self, *args, **kwargs)  # type: ignore[arg-type]
        started.append(self.child)

    monkeypatch.setattr(run_mod.EarlyWorker, "start", recorded)
    ctx = Archiving("pgrecovery-early-fail")
    try:
        ctx.start()
        ctx.pg.execute("insert into t select g, md5(g::text) from generate_series(1, 20000) g")
        base = BaseBackup(dbname=ctx.pg.conninfo()).run(ctx.repo)
        wait_archived(ctx.pg)
        bundle = max((ctx.root / "backups" / base.id).rglob("bundle-*"), key=lambda p: p.stat().st_size)
        bundle.chmod(0o600)
        with open(bundle, "r+b") as f:
            f.seek(bundle.stat().st_size // 2)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0xFF]))
        pgdata = ctx.pgdata()
        with pytest.raises(PgRecoveryError):
            RecoveryPlan(ctx.repo).run(pgdata, record_incident=False)
        assert started, "the restore failed before its WAL worker was started: the test proves nothing"
        assert started[0] is not None
        assert wal_workers(pgdata.parent) == []
        assert not pgdata.exists() or not any(pgdata.iterdir()), sorted(pgdata.rglob("*"))
    finally:
        ctx.close()


def _owner(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_uid, st.st_gid
