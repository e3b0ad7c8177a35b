"""Staging prefetched segments in pg_wal for archive recovery (`pgrecovery.wal._prefetch.stage`), and
restore_command's shell answering a staged segment with exit 1 so that PostgreSQL reads it from pg_wal.

The data directories here are stand-ins (PG_VERSION, recovery.signal, pg_wal/archive_status); the real server's
recovery through staged segments is in tests/integration/test_wal.py.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
from pgtesting import pg_substitute

from pgrecovery import Repository, _spool
from pgrecovery._walnames import segment_name
from pgrecovery.wal import _prefetch
from pgrecovery.wal.archiver import WalArchiver, restore_command

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


def fill(url: str, data: Path, prefetch: int = 4) -> list[str]:
    archiver = WalArchiver(Repository(url), prefetch=prefetch, parallel=2)
    return archiver.run_prefetch(NAMES[0], str(data / _spool.SPOOL_NAME))


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


def cached_pages(path: Path) -> int:
    """How many of ``path``'s pages are in the page cache (mincore on a mapping that touches none)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = path.stat().st_size
    vec = ctypes.create_string_buffer((size + mmap.PAGESIZE - 1) // mmap.PAGESIZE)
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value)
        try:
            assert libc.mincore(addr, size, vec) == 0
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)
    return sum(b & 1 for b in vec.raw)


def test_segments_the_server_read_past_leave_the_page_cache_and_those_ahead_stay(
    tmp_path: Path, archive: tuple[str, dict[str, bytes]]
) -> None:
    """Replay reads each segment once: once the server opens a later staged segment, the filler drops the earlier
    ones' pages (their content untouched), so that the next downloads reuse that memory; never the pages of the
    segment being read or of those ahead."""
    probe = tmp_path / "probe"
    probe.write_bytes(os.urandom(1 << 20))
    os.sync()
    with open(probe, "rb") as f:
        f.read()
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    if cached_pages(probe):
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
