"""The spool without a server (pgrecovery._spool): archive-ahead markers, the prefetch queue and its hand-over,
temporary files left by killed deliveries, and the fast command's answers. Local temporary directories only."""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
import uuid
from pathlib import Path

import pytest

from pgrecovery import Repository, _fastpath, _spool
from pgrecovery._walnames import segment_name
from pgrecovery.wal import WalArchiver

URL = "file:///backups/pg"
TAG = _spool.repo_tag(URL)
SEG = segment_name(1, 3)


@pytest.fixture
def pgdata(tmp_path: Path) -> Path:
    (tmp_path / "pg_wal" / "archive_status").mkdir(parents=True)
    return tmp_path


def wal_file(pgdata: Path, name: str = SEG, data: bytes = b"wal" * 100) -> str:
    path = pgdata / "pg_wal" / name
    path.write_bytes(data)
    return str(path)


def test_the_default_spool_is_beside_pg_wal(pgdata: Path) -> None:
    assert _spool.default_spool(wal_file(pgdata)) == str(pgdata / _spool.SPOOL_NAME)


def test_a_marker_answers_only_for_the_same_file_and_repository(pgdata: Path) -> None:
    path = wal_file(pgdata)
    spool = _spool.default_spool(path)
    assert _spool.pushed_already(path, spool, TAG) is None
    _spool.write_marker(spool, path, os.stat(path), "ab" * 32, TAG)
    assert _spool.pushed_already(path, spool, TAG) == "ab" * 32
    assert _spool.pushed_already(path, spool, _spool.repo_tag("file:///elsewhere")) is None
    marker = _spool.marker_path(spool, SEG)
    assert stat.S_IMODE(os.stat(marker).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(spool).st_mode) == 0o700
    assert os.listdir(os.path.dirname(marker)) == [SEG]  # no temporary file left
    Path(path).write_bytes(b"recycled, other content")  # same name, another file: the marker no longer answers
    assert _spool.pushed_already(path, spool, TAG) is None
    Path(marker).write_text("garbage")
    assert _spool.pushed_already(path, spool, TAG) is None


def test_sweeping_removes_markers_of_files_gone_and_temporary_leftovers(pgdata: Path) -> None:
    kept, gone = wal_file(pgdata, segment_name(1, 1)), wal_file(pgdata, segment_name(1, 2))
    spool = _spool.default_spool(kept)
    for path in (kept, gone):
        _spool.write_marker(spool, path, os.stat(path), "cd" * 32, TAG)
    left = Path(spool, "archived", f".{SEG}.0123abcd.tmp")  # a killed writer's, two minutes ago
    left.write_text("half")
    os.utime(left, (time.time() - 120, time.time() - 120))
    writing = Path(spool, "archived", f".{SEG}.4567cdef.tmp")  # a live writer's, about to be renamed
    writing.write_text("half")
    os.unlink(gone)
    removed = _spool.sweep_markers(spool, os.path.dirname(kept))
    assert sorted(removed) == sorted([os.path.basename(gone), left.name])
    assert sorted(os.listdir(os.path.join(spool, "archived"))) == sorted([os.path.basename(kept), writing.name])
    assert os.listdir(_spool.ack_dir(spool, TAG)) == [os.path.basename(kept)]  # no link keeps a gone file alive
    os.rename(kept, kept + ".moved")  # recycled: renamed away, the name taken by another file
    Path(kept).write_bytes(b"another file")
    _spool.sweep_markers(spool, os.path.dirname(kept))
    assert os.listdir(_spool.ack_dir(spool, TAG)) == []


def test_a_sweep_running_beside_marker_writers_never_costs_them_their_marker(pgdata: Path) -> None:
    """The WAL worker sweeps when a push ends, while its other threads write their markers (a removed temporary
    file cost a push its acknowledgement: the call waited, then pushed again)."""
    paths = [wal_file(pgdata, segment_name(1, i)) for i in range(1, 41)]
    spool = _spool.default_spool(paths[0])
    _spool.write_marker(spool, paths[0], os.stat(paths[0]), "ab" * 32, TAG)
    done = threading.Event()

    def sweep() -> None:
        while not done.is_set():
            _spool.sweep_markers(spool, str(pgdata / "pg_wal"))

    sweeper = threading.Thread(target=sweep)
    sweeper.start()
    try:
        for path in paths[1:]:
            _spool.write_marker(spool, path, os.stat(path), "cd" * 32, TAG)
    finally:
        done.set()
        sweeper.join()
    assert [p for p in paths[1:] if _spool.pushed_already(p, spool, TAG) != "cd" * 32] == []
    assert all(_spool.same_file(p, os.path.join(_spool.ack_dir(spool, TAG), os.path.basename(p))) for p in paths)


def test_ready_files_are_history_first_then_by_name(pgdata: Path) -> None:
    status = pgdata / "pg_wal" / "archive_status"
    for name in (segment_name(2, 5), "00000002.history", segment_name(1, 4), "junk", f"{segment_name(1, 4)}.done"):
        (status / f"{name}.ready").touch()
    (status / f"{segment_name(1, 9)}.done").touch()
    assert _spool.ready_files(str(pgdata / "pg_wal")) == ["00000002.history", segment_name(1, 4), segment_name(2, 5)]
    assert _spool.ready_files(str(pgdata / "nowhere")) == []


def queue(spool: str, *names: str, tag: str = TAG) -> None:
    _spool.set_source(spool, tag)
    for name in names:
        Path(_spool.prefetch_dir(spool), name).write_bytes(name.encode())


def test_a_prefetched_segment_is_handed_over_by_rename(pgdata: Path) -> None:
    spool, dest = str(pgdata / "spool"), str(pgdata / "pg_wal" / "RECOVERYXLOG")
    queue(spool, SEG)
    assert not _spool.take_prefetched(segment_name(1, 4), dest, spool, TAG)  # not queued
    assert not _spool.take_prefetched(SEG, dest, spool, _spool.repo_tag("file:///other"))  # another repository's
    assert _spool.take_prefetched(SEG, dest, spool, TAG)
    assert Path(dest).read_bytes() == SEG.encode()
    assert _spool.prefetched(spool) == []


def test_across_filesystems_the_hand_over_copies_durably(pgdata: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool, dest = str(pgdata / "spool"), str(pgdata / "pg_wal" / "RECOVERYXLOG")
    queue(spool, SEG)
    real_replace = os.replace
    calls = []

    def replace(src: str, dst: str) -> None:
        calls.append(src)
        if len(calls) == 1:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    assert _spool.take_prefetched(SEG, dest, spool, TAG)
    assert Path(dest).read_bytes() == SEG.encode()
    assert _spool.prefetched(spool) == []
    assert sorted(os.listdir(pgdata / "pg_wal")) == ["RECOVERYXLOG", "archive_status"]  # no temporary file left


def test_another_repository_empties_the_queue(pgdata: Path) -> None:
    spool = str(pgdata / "spool")
    queue(spool, segment_name(1, 4), segment_name(1, 5))
    Path(_spool.prefetch_dir(spool), f".{segment_name(1, 6)}.0123abcd.tmp").write_bytes(b"half")
    assert _spool.prefetched(spool) == [segment_name(1, 4), segment_name(1, 5)]
    _spool.set_source(spool, "another")
    assert _spool.prefetched(spool) == []
    assert _spool.source_matches(spool, "another")
    assert sorted(os.listdir(_spool.prefetch_dir(spool))) == [".source"]


def test_the_queue_is_full_when_half_the_window_is_there(pgdata: Path) -> None:
    spool = str(pgdata / "spool")
    queue(spool, segment_name(1, 4), segment_name(1, 5))
    assert _spool.queue_is_full(SEG, spool, 4, 16 << 20)
    assert not _spool.queue_is_full(SEG, spool, 8, 16 << 20)
    _spool.note_wanted(spool, SEG)
    assert _spool.read_wanted(spool) == SEG
    _spool.note_wanted(spool, "00000002.history")
    assert _spool.read_wanted(spool) is None


def test_stale_temporary_files_of_killed_deliveries_are_removed(tmp_path: Path) -> None:
    dest = tmp_path / "RECOVERYXLOG"
    stale = [f".RECOVERYXLOG.{x}.tmp" for x in ("0123abcd", "deadbeef")]
    others = [".RECOVERYXLOG.tmp", ".RECOVERYXLOG.toolongname.tmp", ".OTHER.0123abcd.tmp", "RECOVERYXLOG.0123abcd.tmp"]
    for name in stale + others:
        (tmp_path / name).write_bytes(b"")
    assert sorted(_spool.remove_stale_temps(str(dest))) == stale
    assert sorted(os.listdir(tmp_path)) == sorted(others)


def test_fetch_takes_the_prefetched_segment_without_asking_the_repository(pgdata: Path) -> None:
    repo = Repository(f"memory://spool-{uuid.uuid4().hex}")  # empty: a miss there would be an error
    spool = str(pgdata / "spool")
    queue(spool, SEG, tag=_spool.repo_tag(repo.url))
    dest = pgdata / "pg_wal" / "RECOVERYXLOG"
    (pgdata / "pg_wal" / ".RECOVERYXLOG.0123abcd.tmp").write_bytes(b"left by a killed delivery")
    assert WalArchiver(repo, spool_dir=spool).fetch(SEG, dest, prefetch=False)
    assert dest.read_bytes() == SEG.encode()
    assert sorted(os.listdir(pgdata / "pg_wal")) == ["RECOVERYXLOG", "archive_status"]


# -- the fast command ------------------------------------------------------------------------------------------


def test_the_fast_command_answers_a_push_from_its_marker(pgdata: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGRECOVERY_WAL_WORKER", "off")  # no worker to hand it to (tests/unit/wal/test_worker.py)
    path = wal_file(pgdata)
    argv = ["wal-push", "--repo", URL, path]
    assert _fastpath.fast_command(argv) is None  # not marked: the full CLI must archive it
    _spool.write_marker(_spool.default_spool(path), path, os.stat(path), "ef" * 32, TAG)
    assert _fastpath.fast_command(argv) == 0
    assert _fastpath.fast_command(["wal-push", "--repo", "file:///other", path]) is None


def test_the_fast_command_answers_a_fetch_from_the_queue(pgdata: Path) -> None:
    spool, dest = str(pgdata / "spool"), str(pgdata / "pg_wal" / "RECOVERYXLOG")
    argv = ["wal-fetch", "--repo", URL, "--spool", spool, "--no-prefetch", SEG, dest]
    assert _fastpath.fast_command(argv) is None  # a miss is for the full CLI to confirm
    queue(spool, SEG)
    assert _fastpath.fast_command(argv) == 0
    assert Path(dest).read_bytes() == SEG.encode()


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["wal-verify", "--repo", URL],
        ["wal-push", SEG],  # no repository
        ["wal-push", "--repo", URL, "--compression", "gzip", SEG],  # an option only the full CLI knows
        ["wal-push", "--repo"],
        ["wal-fetch", "--repo", URL, SEG],  # no destination
    ],
)
def test_anything_else_goes_to_the_full_cli(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGRECOVERY_REPO", raising=False)
    assert _fastpath.fast_command(argv) is None


@pytest.mark.parametrize("mode", [0o600, 0o755, 0o500])
def test_a_spool_directory_of_ours_is_given_mode_0700_whatever_made_it(tmp_path: Path, mode: int) -> None:
    """A directory made under a umask that took the owner's search bit (a thread that set the process's umask for
    a moment) would make every file in it unreachable: the queue would never fill. It is repaired, as a looser
    one is tightened."""
    made = tmp_path / "prefetch"
    made.mkdir()
    made.chmod(mode)
    assert _spool.ensure_dir(str(made)) == str(made)
    assert stat.S_IMODE(made.stat().st_mode) == 0o700
    (made / "queued").write_bytes(b"reachable")
