"""Staging prefetched segments in pg_wal for archive recovery (`pgrecovery.wal._prefetch.stage`), and
restore_command's shell answering a staged segment with exit 1 so that PostgreSQL reads it from pg_wal.

The data directories here are stand-ins (PG_VERSION, recovery.signal, pg_wal/archive_status); the real server's
recovery through staged segments is in tests/integration/test_wal.py.
"""

from __future__ import annotations

import mmap
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pgtesting import cached_pages, page_cache_drops, pg_substitute, wal_workers

from pgrecovery import Repository, _fastpath, _spool, _walclient
from pgrecovery._walnames import segment_name
from pgrecovery.wal import _prefetch
from pgrecovery.wal.archiver import WalArchiver, restore_command
from pgrecovery.wal.worker import start_for_recovery

NAMES = [segment_name(1, n) for n in range(3, 9)]


def data_dir(root: Path, *, major: str = "15", signal: str = "recovery.signal") -> Path:
    data = root / "data"
    (data / "pg_wal" / "archive_status").mkdir(parents=True)
    (data / "PG_VERSION").write_text(major + "\n")
    (data / "postmaster.pid").write_text(f"{os.getpid()}\n")  # "the server runs"
    if signal:
        (data / signal).write_text("")
    return data


@pytest.fixture(autouse=True)
def short_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """No server reads the staged segments here: the filler waits half a second for it, not a minute."""
    monkeypatch.setattr(_prefetch, "STAGED_LINGER", 0.5)


@pytest.fixture
def archive(tmp_path: Path) -> tuple[str, dict[str, bytes]]:
    """A file:// repository holding NAMES (distinct 1 MB contents)."""
    url = f"file://{tmp_path}/repo"
    source = tmp_path / "source" / "pg_wal"
    source.mkdir(parents=True)
    contents = {}
    archiver = WalArchiver(Repository(url), spool_dir=str(tmp_path / "source-spool"))
    for name in NAMES:
        contents[name] = os.urandom(1 << 20)
        (source / name).write_bytes(contents[name])
        archiver.push(str(source / name))
    return url, contents


def fill(url: str, data: Path, prefetch: int = 4, *, asked: bool = True, restoring: bool = False) -> list[str]:
    """The prefetcher after NAMES[0]; ``asked``: as restore_command starts it, having delivered NAMES[0] (noted
    as wanted); otherwise as a worker started ahead of its server does, before any ask (``restoring``: during
    the restore of the data directory)."""
    archiver = WalArchiver(Repository(url), prefetch=prefetch, parallel=2)
    spool = str(data / _spool.SPOOL_NAME)
    if asked:
        _spool.note_wanted(spool, NAMES[0])
    return archiver.run_prefetch(NAMES[0], spool, restoring=restoring)


def restore(url: str, data: Path, name: str) -> int:
    """restore_command for ``name`` as PostgreSQL runs it (from the data directory, RECOVERYXLOG removed first)."""
    (data / "pg_wal" / "RECOVERYXLOG").unlink(missing_ok=True)
    shell = pg_substitute(restore_command(url), "pg_wal/RECOVERYXLOG", name)
    return subprocess.run(["/bin/sh", "-c", shell], cwd=data, capture_output=True, timeout=60).returncode


def test_verified_segments_are_staged_in_pg_wal_and_the_shell_hands_them_over(
    tmp_path: Path, archive: tuple[str, dict[str, bytes]]
) -> None:
    url, contents = archive
    data = data_dir(tmp_path)
    got = fill(url, data)
    assert sorted(got) == NAMES[1:5]  # the window: four ahead of the first segment
    queue = data / _spool.SPOOL_NAME / "prefetch"
    for name in got:
        staged = data / "pg_wal" / name
        assert staged.read_bytes() == contents[name]
        assert os.path.samefile(staged, queue / name)  # the very file verified into the queue
        assert (data / "pg_wal" / "archive_status" / f"{name}.done").exists()  # as PostgreSQL marks a restored one
    # restore_command: exit 1 for a staged segment (PostgreSQL reads pg_wal/<name>), noted for the filler and the
    # recovery's report; nothing is written over RECOVERYXLOG
    assert restore(url, data, got[0]) == 1
    assert not (data / "pg_wal" / "RECOVERYXLOG").exists()
    assert (queue / ".wanted").read_text().split() == [got[0]]
    assert restore(url, data, got[1]) == 1
    assert (queue / ".taken").read_text().split() == got[:2]
    # a segment the archive has but the queue does not: fetched by Python into RECOVERYXLOG, as ever
    assert restore(url, data, NAMES[0]) == 0
    assert (data / "pg_wal" / "RECOVERYXLOG").read_bytes() == contents[NAMES[0]]


def test_a_file_already_in_pg_wal_is_never_replaced_and_nothing_is_staged_beside_it(
    tmp_path: Path, archive: tuple[str, dict[str, bytes]]
) -> None:
    """A segment already in pg_wal (left by the server whose data directory this was) is not the archived one:
    it stays as it is, restore_command delivers the archived segment into RECOVERYXLOG (exit 0), and nothing is
    staged at all (PostgreSQL, once it reads one staged segment, would read on into that file)."""
    url, contents = archive
    data = data_dir(tmp_path)
    other = data / "pg_wal" / NAMES[2]
    other.write_bytes(b"not the archived segment")
    later = time.time() + 5  # the server started after the file was there
    os.utime(data / "postmaster.pid", (later, later))
    assert fill(url, data)
    assert not (data / "pg_wal" / NAMES[1]).exists()
    assert other.read_bytes() == b"not the archived segment"
    assert not (data / "pg_wal" / "archive_status" / f"{NAMES[2]}.done").exists()
    assert restore(url, data, NAMES[2]) == 0
    assert (data / "pg_wal" / "RECOVERYXLOG").read_bytes() == contents[NAMES[2]]
    assert other.read_bytes() == b"not the archived segment"


@pytest.mark.parametrize(
    ("major", "signal", "why"),
    [
        ("15", "standby.signal", "a standby's WAL receiver writes into pg_wal"),
        ("15", "", "not in archive recovery"),
        ("14", "recovery.signal", "before 15, recycled segments may be installed into pg_wal during recovery"),
    ],
)
def test_no_staging_where_pg_wal_is_not_ours_to_fill(
    tmp_path: Path, archive: tuple[str, dict[str, bytes]], major: str, signal: str, why: str
) -> None:
    url, contents = archive
    data = data_dir(tmp_path, major=major, signal=signal)
    got = fill(url, data)
    assert got, why
    assert not any((data / "pg_wal" / n).exists() for n in NAMES), why
    assert restore(url, data, got[0]) == 0, why  # the queued segment, renamed into RECOVERYXLOG
    assert (data / "pg_wal" / "RECOVERYXLOG").read_bytes() == contents[got[0]]


def test_a_spool_given_by_path_stages_nothing(tmp_path: Path, archive: tuple[str, dict[str, bytes]]) -> None:
    """With --spool elsewhere, where the recovering pg_wal is cannot be known: nothing is staged."""
    data = data_dir(tmp_path)
    assert _prefetch.staging_dir(str(tmp_path / "elsewhere" / "spool")) is None
    assert _prefetch.staging_dir(str(data / _spool.SPOOL_NAME)) == str(data / "pg_wal")


def test_a_failed_link_leaves_no_status_behind(tmp_path: Path) -> None:
    """The .done is written first; if the link then fails (here: the queued file is gone), it is removed again."""
    data = data_dir(tmp_path)
    assert not _prefetch.stage(str(tmp_path / "gone" / NAMES[0]), str(data / "pg_wal"))
    assert list((data / "pg_wal" / "archive_status").iterdir()) == []


def test_the_filler_follows_the_server_reading_staged_segments_without_restore_command(
    tmp_path: Path, archive: tuple[str, dict[str, bytes]]
) -> None:
    """PostgreSQL reads on through pg_wal while the next segment is there, calling no restore_command: the filler
    sees each staged segment opened (inotify) and moves its window on, two ahead here, to the archive's end."""
    url, contents = archive
    data = data_dir(tmp_path)
    got: list[str] = []
    filler = threading.Thread(target=lambda: got.extend(fill(url, data, prefetch=2)))
    filler.start()
    read = []
    deadline = time.monotonic() + 30
    for name in NAMES[1:]:  # the "server": each segment once it is staged, in order
        while not (data / "pg_wal" / name).exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        read.append((data / "pg_wal" / name).read_bytes())
    filler.join(30)
    assert read == [contents[n] for n in NAMES[1:]]
    assert sorted(got) == NAMES[1:]  # (in the order the downloads ended)
    taken = (data / _spool.SPOOL_NAME / "prefetch" / ".taken").read_text().split()
    assert taken == NAMES[1:]  # for the recovery's report of what was replayed
    # at the end of recovery the server asks for the last segment once more: the shell tells it to read pg_wal
    # (exit 1; a download would exit 0 with RECOVERYXLOG written)
    assert restore(url, data, NAMES[-1]) == 1
    assert not (data / "pg_wal" / "RECOVERYXLOG").exists()


def test_a_later_filler_stages_on_beside_what_an_earlier_one_staged(
    tmp_path: Path, archive: tuple[str, dict[str, bytes]]
) -> None:
    """Staged segments the server has read are no longer in the queue, but they are this spool's (``.staged``):
    a filler started later stages on beside them."""
    url, _contents = archive
    data = data_dir(tmp_path)
    first = fill(url, data, prefetch=2)
    queue = data / _spool.SPOOL_NAME / "prefetch"
    for name in first:  # read by the server, and swept from the queue
        (queue / name).unlink()
    archiver = WalArchiver(Repository(url), prefetch=2, parallel=2)
    later = archiver.run_prefetch(max(first), str(data / _spool.SPOOL_NAME))
    assert sorted(later) == NAMES[3:5]
    assert all(os.path.samefile(data / "pg_wal" / n, queue / n) for n in later)


def test_segments_the_server_restored_since_it_started_do_not_stop_staging(
    tmp_path: Path, archive: tuple[str, dict[str, bytes]]
) -> None:
    """PostgreSQL keeps each segment restore_command gave it in pg_wal under its own name: such a file, newer than
    the server's start, is not a leftover, and staging goes on beside it."""
    url, contents = archive
    data = data_dir(tmp_path)
    earlier = time.time() - 5
    os.utime(data / "postmaster.pid", (earlier, earlier))
    (data / "pg_wal" / NAMES[0]).write_bytes(contents[NAMES[0]])  # restored by the server
    got = fill(url, data)
    assert got
    assert all(os.path.samefile(data / "pg_wal" / n, data / _spool.SPOOL_NAME / "prefetch" / n) for n in got)


def test_staging_can_be_turned_off(
    tmp_path: Path, archive: tuple[str, dict[str, bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """PGRECOVERY_WAL_STAGING=off in the server's environment (which the prefetcher inherits): the queue works as
    before, restore_command renames each segment into RECOVERYXLOG."""
    monkeypatch.setenv(_prefetch.STAGING_ENV, "off")
    url, contents = archive
    data = data_dir(tmp_path)
    got = fill(url, data)
    assert got
    assert not any((data / "pg_wal" / n).exists() for n in NAMES)
    assert restore(url, data, got[0]) == 0
    assert (data / "pg_wal" / "RECOVERYXLOG").read_bytes() == contents[got[0]]


def test_segments_the_server_read_past_leave_the_page_cache_and_those_ahead_stay(
    tmp_path: Path, archive: tuple[str, dict[str, bytes]]
) -> None:
    """Replay reads each segment once: once the server opens a later staged segment, the filler drops the earlier
    ones' pages (their content untouched), so that the next downloads reuse that memory; never the pages of the
    segment being read or of those ahead."""
    if not page_cache_drops(tmp_path):
        pytest.skip("this filesystem keeps a file's pages in memory whatever the advice (tmpfs)")
    url, contents = archive
    data = data_dir(tmp_path)
    (tmp_path / "peek").mkdir()

    def peek(path: Path) -> Path:
        """The file under a name outside pg_wal: opening it there is not the server opening it (inotify)."""
        other = tmp_path / "peek" / path.name
        if not other.exists():
            os.link(path, other)
        return other

    filler = threading.Thread(target=lambda: fill(url, data, prefetch=4))
    filler.start()
    pg_wal = data / "pg_wal"
    deadline = time.monotonic() + 30
    for name in NAMES[1:]:  # the "server", in order; each segment clean first (a dirty page is written back first)
        while not (pg_wal / name).exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        os.sync()
        assert (pg_wal / name).read_bytes() == contents[name]
        time.sleep(0.1)  # the filler looks every 10 ms
        ahead = [n for n in NAMES[NAMES.index(name) :] if (pg_wal / n).exists()]
        assert [cached_pages(peek(pg_wal / n)) for n in ahead] == [(1 << 20) // mmap.PAGESIZE] * len(ahead)
    read_past, last = NAMES[1:-1], NAMES[-1]
    assert [cached_pages(peek(pg_wal / n)) for n in read_past] == [0] * len(read_past)
    assert cached_pages(peek(pg_wal / last)) == (1 << 20) // mmap.PAGESIZE
    filler.join(30)
    assert [(pg_wal / n).read_bytes() for n in NAMES[1:]] == [contents[n] for n in NAMES[1:]]


def test_once_recovery_is_over_nothing_stays_queued(tmp_path: Path, archive: tuple[str, dict[str, bytes]]) -> None:
    """The segment being read stays queued for the server's last ask; when recovery ends (PostgreSQL removes
    recovery.signal) the filler leaves no segment behind in the queue, and pg_wal keeps every staged file."""
    url, contents = archive
    data = data_dir(tmp_path)
    filler = threading.Thread(target=lambda: fill(url, data, prefetch=4))
    filler.start()
    pg_wal, queue = data / "pg_wal", data / _spool.SPOOL_NAME / "prefetch"
    deadline = time.monotonic() + 30
    for name in NAMES[1:-1]:
        while not (pg_wal / name).exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        (pg_wal / name).read_bytes()
    time.sleep(0.1)
    assert NAMES[-2] in os.listdir(queue)  # the segment being read
    (data / "recovery.signal").unlink()
    filler.join(30)
    assert not filler.is_alive()
    assert [n for n in os.listdir(queue) if n in NAMES] == []
    assert [(pg_wal / n).read_bytes() for n in NAMES[1:]] == [contents[n] for n in NAMES[1:]]


def test_a_worker_started_before_its_server_stages_the_first_segments_for_it(
    tmp_path: Path, archive: tuple[str, dict[str, bytes]]
) -> None:
    """`start_for_recovery` (what RecoveryPlan.run does before it starts the server): with no server yet, the
    worker downloads and stages the backup's first segments; the server's first asks are answered by the shell
    (exit 1: read pg_wal), and a second start finds the worker running."""
    url, contents = archive
    data = data_dir(tmp_path)
    (data / "postmaster.pid").unlink()  # not started yet
    spool = str(data / _spool.SPOOL_NAME)
    try:
        assert start_for_recovery(url, str(data), NAMES[1])
        assert not start_for_recovery(url, str(data), NAMES[1])  # one runs (holding the spool's worker lock)
        first = NAMES[1:4]
        deadline = time.monotonic() + 60
        while not all((data / "pg_wal" / n).exists() for n in first) and time.monotonic() < deadline:
            time.sleep(0.02)
        queue = data / _spool.SPOOL_NAME / "prefetch"  # (read there: an open in pg_wal is the server reading)
        assert all(os.path.samefile(data / "pg_wal" / n, queue / n) for n in first)
        assert [(queue / n).read_bytes() for n in first] == [contents[n] for n in first]
        assert all((data / "pg_wal" / "archive_status" / f"{n}.done").exists() for n in first)
        # with PostgreSQL's umask, not ours: nothing the worker wrote is readable by others
        written = [p for p in (data / _spool.SPOOL_NAME).rglob("*") if not p.is_socket()]
        assert written
        assert [p.name for p in written if p.stat().st_mode & 0o077] == []
        (data / "postmaster.pid").write_text(f"{os.getpid()}\n")  # the server starts
        assert restore(url, data, NAMES[1]) == 1  # staged: PostgreSQL reads it from pg_wal
        assert not (data / "pg_wal" / "RECOVERYXLOG").exists()
        assert restore(url, data, "00000002.history") == 1  # the start-up probe: a miss the worker answers
    finally:
        _walclient.stop(spool)
    deadline = time.monotonic() + 10
    while wal_workers(tmp_path) and time.monotonic() < deadline:  # (the lock goes a moment before the process)
        time.sleep(0.02)
    assert wal_workers(tmp_path) == []


def test_a_filler_started_during_the_restore_queues_two_then_stages_once_recovery_is_configured(
    tmp_path: Path, archive: tuple[str, dict[str, bytes]]
) -> None:
    """A worker started while the base backup is being restored (`pgrecovery.recovery.run.EarlyWorker`): no
    recovery.signal yet, so nothing can be staged, and the restore has every core: the filler queues the first
    two segments only. Once the restore has written recovery.signal, it stages what it queued and fills the rest
    of its window, staged too."""
    url, contents = archive
    data = data_dir(tmp_path, signal="")
    (data / "postmaster.pid").unlink()  # no server yet: the restore runs
    queue = data / _spool.SPOOL_NAME / "prefetch"
    filler = threading.Thread(target=fill, args=(url, data), kwargs={"asked": False, "restoring": True})
    filler.start()
    try:
        deadline = time.monotonic() + 30
        while len([n for n in os.listdir(queue) if n in NAMES] if queue.exists() else []) < 2:
            assert time.monotonic() < deadline, "the filler queued nothing while the restore ran"
            time.sleep(0.02)
        time.sleep(0.5)  # would it go on?
        assert sorted(n for n in os.listdir(queue) if n in NAMES) == NAMES[1:3]
        assert not any((data / "pg_wal" / n).exists() for n in NAMES)
        (data / "recovery.signal").write_text("")  # the restore configures recovery
        window = NAMES[1:5]
        while not all((data / "pg_wal" / n).exists() for n in window):
            assert time.monotonic() < deadline, "the queued segments were not staged once recovery was configured"
            time.sleep(0.02)
        assert all(os.path.samefile(data / "pg_wal" / n, queue / n) for n in window)
        assert [(queue / n).read_bytes() for n in window] == [contents[n] for n in window]
        assert all((data / "pg_wal" / "archive_status" / f"{n}.done").exists() for n in window)
    finally:
        (data / "postmaster.pid").write_text("99999999\n")  # "a server that stopped": the filler leaves
        filler.join(60)
    assert not filler.is_alive()


def test_a_filler_not_started_for_a_restore_does_not_wait_for_one(
    tmp_path: Path, archive: tuple[str, dict[str, bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the worker a recovery starts during its restore waits for the data directory to be configured: a
    prefetch started otherwise (wal-fetch by hand, no server, no recovery.signal) fills its window and leaves
    after its linger, as before (waiting 30 s there made every kill -9 point of the wal-fetch sweep 30 s)."""
    monkeypatch.setattr(_prefetch, "AWAIT_START", 60.0)
    url, _contents = archive
    data = data_dir(tmp_path, signal="")
    (data / "postmaster.pid").unlink()
    t0 = time.monotonic()
    got = fill(url, data, asked=False)
    assert sorted(got) == NAMES[1:5]  # (downloaded two at a time: they may end in either order)
    assert time.monotonic() - t0 < 30


def test_nothing_is_staged_before_the_server_starts_beside_a_segment_left_in_pg_wal(
    tmp_path: Path, archive: tuple[str, dict[str, bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the server starts, every segment in pg_wal that this spool did not stage is older than the server:
    a leftover, perhaps of another history. The queue still fills; nothing is staged beside it."""
    monkeypatch.setattr(_prefetch, "AWAIT_START", 0.5)
    url, _contents = archive
    data = data_dir(tmp_path)
    (data / "postmaster.pid").unlink()
    (data / "pg_wal" / NAMES[4]).write_bytes(b"left by the server whose data directory this was")
    got = fill(url, data, asked=False)
    assert got
    assert not any((data / "pg_wal" / n).exists() for n in NAMES if n != NAMES[4])
    assert (data / "pg_wal" / NAMES[4]).read_bytes() == b"left by the server whose data directory this was"


def test_a_filler_started_before_its_server_waits_for_it_then_leaves(
    tmp_path: Path, archive: tuple[str, dict[str, bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Staged segments wait for a server that has not started yet, for AWAIT_START seconds; a server that never
    comes does not keep the filler (nor the queue) forever."""
    monkeypatch.setattr(_prefetch, "AWAIT_START", 1.0)
    monkeypatch.setattr(_prefetch, "STAGED_LINGER", 60)
    url, _contents = archive
    data = data_dir(tmp_path)
    (data / "postmaster.pid").unlink()
    t0 = time.monotonic()
    got = fill(url, data, asked=False)
    took = time.monotonic() - t0
    assert got
    assert all(os.path.exists(data / "pg_wal" / n) for n in got)  # staged, though no server runs yet
    assert 1.0 <= took < 30
    assert [n for n in os.listdir(data / _spool.SPOOL_NAME / "prefetch") if n in NAMES] == []


def test_a_segment_asked_for_while_the_prefetcher_downloads_it_is_not_downloaded_twice(
    tmp_path: Path, archive: tuple[str, dict[str, bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server asks for a segment the shell did not find queued because its download was under way: the WAL
    worker waits for that download and answers "staged" (restore_command exits 1, the server reads pg_wal)."""
    from pgrecovery.wal.worker import ArchivingWorker

    url, contents = archive
    data = data_dir(tmp_path)
    archiver = WalArchiver(Repository(url), prefetch=4, parallel=2)
    downloads: list[str] = []
    real = archiver._download

    def slow_download(obj: Any, dest: str, **kwargs: Any) -> None:
        downloads.append(obj.name)
        time.sleep(0.5)
        real(obj, dest, **kwargs)

    monkeypatch.setattr(archiver, "_download", slow_download)
    spool = str(data / _spool.SPOOL_NAME)
    worker = ArchivingWorker(archiver, spool, str(data / "pg_wal"))
    assert worker.prefetch(NAMES[0]) == "ok"
    reply = worker.fetch(NAMES[1], str(data / "pg_wal" / "RECOVERYXLOG"))
    assert reply == "staged"
    assert downloads.count(NAMES[1]) == 1
    assert (data / "pg_wal" / NAMES[1]).read_bytes() == contents[NAMES[1]]
    assert not (data / "pg_wal" / "RECOVERYXLOG").exists()
    assert NAMES[1] in (data / _spool.SPOOL_NAME / "prefetch" / ".taken").read_text().split()
    (data / "recovery.signal").unlink()  # recovery over: the prefetcher leaves
    worker._stopping = True
    assert worker._prefetcher is not None
    worker._prefetcher.join(30)


def test_the_servers_start_up_fsync_of_staged_segments_is_not_taken_for_reading(
    tmp_path: Path, archive: tuple[str, dict[str, bytes]]
) -> None:
    """A worker started ahead of its server stages segments before the server starts; PostgreSQL's start-up then
    opens every file of the data directory to fsync it. Those opens, before its first ask, do not move the window
    (the queue would be swept of the very segments it is about to ask for)."""
    url, contents = archive
    data = data_dir(tmp_path)
    filler = threading.Thread(target=lambda: fill(url, data, prefetch=4, asked=False))
    filler.start()
    pg_wal = data / "pg_wal"
    first = NAMES[1:5]
    deadline = time.monotonic() + 30
    while not all((pg_wal / n).exists() for n in first) and time.monotonic() < deadline:
        time.sleep(0.01)
    for name in first:  # the start-up's fsync of the data directory
        fd = os.open(pg_wal / name, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    time.sleep(0.2)  # the filler looks every 10 ms
    assert restore(url, data, NAMES[1]) == 1  # still queued and staged: read from pg_wal
    assert not (pg_wal / "RECOVERYXLOG").exists()
    (data / "recovery.signal").unlink()
    filler.join(30)
    assert [(pg_wal / n).read_bytes() for n in first] == [contents[n] for n in first]


def test_a_segment_staged_after_the_shell_looked_is_read_from_pg_wal(
    tmp_path: Path, archive: tuple[str, dict[str, bytes]]
) -> None:
    """The shell found nothing queued (the download was ending); by the time Python looks, the segment is queued
    and staged: it answers as the shell would have (exit 1, read pg_wal), rather than move the file into place."""
    url, contents = archive
    data = data_dir(tmp_path)
    fill(url, data)
    dest = data / "pg_wal" / "RECOVERYXLOG"
    assert os.path.samefile(data / "pg_wal" / NAMES[1], data / _spool.SPOOL_NAME / "prefetch" / NAMES[1])
    assert _fastpath.fast_command(["wal-fetch", "--repo", url, NAMES[1], str(dest)]) == 1
    assert not dest.exists()
    assert (data / "pg_wal" / NAMES[1]).read_bytes() == contents[NAMES[1]]
    assert NAMES[1] in (data / _spool.SPOOL_NAME / "prefetch" / ".taken").read_text().split()
