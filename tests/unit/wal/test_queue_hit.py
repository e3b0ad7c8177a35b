"""The shell parts of the fast restore_command and archive_command, and the queue filler that works with them.

A prefetched segment is moved into place by the shell alone (no Python starts: the interpreter here is a
recorder that fails the test if it runs); anything the queue cannot answer for sure (another repository's queue,
a file it lacks, a history file) goes to Python. The filler sees segments disappear from the queue and keeps its
window ahead of them, then stops once recovery takes nothing for a while.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pgtesting import pg_substitute

from pgrecovery import Repository, _spool
from pgrecovery._walnames import segment_name
from pgrecovery.wal import _absent, _prefetch
from pgrecovery.wal.archiver import WalArchiver, archive_command, restore_command

URL = "file:///nowhere/repo"
SEG = segment_name(1, 5)


@pytest.fixture
def recorder(tmp_path: Path) -> tuple[Path, Path]:
    """A stand-in interpreter that records its arguments (the Python part ran) and exits 0."""
    record = tmp_path / "ran.json"
    exe = tmp_path / "python"
    exe.write_text(f"#!{sys.executable}\nimport json, sys\njson.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n")
    exe.chmod(0o755)
    return exe, record


def run(command: str, cwd: Path, p: str, f: str) -> int:
    shell = pg_substitute(command, p, f)
    return subprocess.run(["/bin/sh", "-c", shell], cwd=cwd, capture_output=True, timeout=30).returncode


def queue(spool: Path, tag_url: str = URL, **files: bytes) -> Path:
    _spool.set_source(str(spool), _spool.repo_tag(tag_url))
    for name, data in files.items():
        (spool / "prefetch" / name).write_bytes(data)
    return spool / "prefetch"


def test_a_queued_segment_is_moved_by_the_shell_alone(tmp_path: Path, recorder: tuple[Path, Path]) -> None:
    exe, ran = recorder
    data = tmp_path / "data"
    (data / "pg_wal").mkdir(parents=True)
    q = queue(data / "pgrecovery_spool", **{SEG: b"verified segment"})
    assert run(restore_command(URL, str(exe)), data, "pg_wal/RECOVERYXLOG", SEG) == 0
    assert (data / "pg_wal" / "RECOVERYXLOG").read_bytes() == b"verified segment"
    assert not (q / SEG).exists()
    assert not ran.exists(), "Python ran for a segment the queue held"


def test_an_absolute_p_finds_the_default_spool_beside_it(tmp_path: Path, recorder: tuple[Path, Path]) -> None:
    """As pg_rewind runs restore_command: %p absolute, the working directory elsewhere."""
    exe, ran = recorder
    data = tmp_path / "da ta"
    (data / "pg_wal").mkdir(parents=True)
    queue(data / "pgrecovery_spool", **{SEG: b"x"})
    assert run(restore_command(URL, str(exe)), tmp_path, str(data / "pg_wal" / "RECOVERYXLOG"), SEG) == 0
    assert (data / "pg_wal" / "RECOVERYXLOG").read_bytes() == b"x"
    assert not ran.exists()


def test_an_explicit_spool_is_used(tmp_path: Path, recorder: tuple[Path, Path]) -> None:
    exe, ran = recorder
    spool = tmp_path / "my spool %f"
    (tmp_path / "pg_wal").mkdir()
    queue(spool, **{SEG: b"y"})
    assert run(restore_command(URL, str(exe), spool_dir=str(spool)), tmp_path, "pg_wal/RECOVERYXLOG", SEG) == 0
    assert (tmp_path / "pg_wal" / "RECOVERYXLOG").read_bytes() == b"y"
    assert not ran.exists()


@pytest.mark.parametrize("case", ["another repository", "not queued", "history file", "no queue"])
def test_anything_else_goes_to_python(tmp_path: Path, recorder: tuple[Path, Path], case: str) -> None:
    exe, ran = recorder
    data = tmp_path / "data"
    (data / "pg_wal").mkdir(parents=True)
    name = "00000002.history" if case == "history file" else SEG
    if case != "no queue":
        tag_url = "file:///another/repo" if case == "another repository" else URL
        files = {} if case == "not queued" else {SEG: b"queued"}
        queue(data / "pgrecovery_spool", tag_url, **files)
    assert run(restore_command(URL, str(exe)), data, "pg_wal/RECOVERYXLOG", name) == 0  # the recorder's 0
    assert json.loads(ran.read_text())[-2:] == [name, "pg_wal/RECOVERYXLOG"]
    assert not (data / "pg_wal" / "RECOVERYXLOG").exists()


def test_a_failed_move_goes_to_python_not_to_a_miss(tmp_path: Path, recorder: tuple[Path, Path]) -> None:
    """%p's directory missing: mv fails, and the command must not exit non-zero ("not archived") from the shell."""
    exe, ran = recorder
    data = tmp_path / "data"
    queue(data / "pgrecovery_spool", **{SEG: b"z"})
    (data / "pg_wal").mkdir(parents=True)
    (data / "pg_wal" / "RECOVERYXLOG").mkdir()  # a directory in the way: rename fails
    (data / "pg_wal" / "RECOVERYXLOG" / "x").write_bytes(b"")
    assert run(restore_command(URL, str(exe)), data, "pg_wal/RECOVERYXLOG", SEG) == 0
    assert ran.exists()


def test_a_queue_written_in_another_boot_is_never_taken(
    tmp_path: Path, recorder: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Queued files are not fsynced: after a power loss (a reboot: a new boot id) they may be torn, so neither the
    shell nor Python hands them over, and the next filler empties the queue before it fills it again."""
    exe, ran = recorder
    boot = tmp_path / "boot_id"
    boot.write_text("11111111-aaaa\n")
    monkeypatch.setattr(_spool, "BOOT_ID", str(boot))
    data = tmp_path / "data"
    (data / "pg_wal").mkdir(parents=True)
    spool = data / "pgrecovery_spool"
    q = queue(spool, **{SEG: b"written before the power went"})
    command = restore_command(URL, str(exe))
    boot.write_text("22222222-bbbb\n")  # rebooted
    assert run(command, data, "pg_wal/RECOVERYXLOG", SEG) == 0
    assert json.loads(ran.read_text())[-2:] == [SEG, "pg_wal/RECOVERYXLOG"]  # Python decides, from the archive
    assert not _spool.take_prefetched(SEG, str(data / "pg_wal" / "RECOVERYXLOG"), str(spool), _spool.repo_tag(URL))
    assert not (data / "pg_wal" / "RECOVERYXLOG").exists()
    assert _spool.set_source(str(spool), _spool.repo_tag(URL)) is False  # this boot's queue: no fsync needed
    assert not (q / SEG).exists()


def test_where_the_boot_is_unknown_queued_files_are_fsynced_and_still_taken(
    tmp_path: Path, recorder: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    exe, ran = recorder
    monkeypatch.setattr(_spool, "BOOT_ID", str(tmp_path / "no such file"))
    data = tmp_path / "data"
    (data / "pg_wal").mkdir(parents=True)
    assert _spool.set_source(str(data / "pgrecovery_spool"), _spool.repo_tag(URL)) is True
    queue(data / "pgrecovery_spool", **{SEG: b"fsynced segment"})
    assert run(restore_command(URL, str(exe)), data, "pg_wal/RECOVERYXLOG", SEG) == 0
    assert (data / "pg_wal" / "RECOVERYXLOG").read_bytes() == b"fsynced segment"
    assert not ran.exists()


@pytest.mark.parametrize("case", ["published", "expired", "not listed", "another repository", "another boot"])
def test_what_the_filler_found_missing_is_answered_by_the_shell_alone_for_a_second(
    tmp_path: Path, recorder: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """A name the filler's listing lacked, begun less than a second ago in this boot, is "not archived" (exit 1)
    with no program started; anything else still goes to Python, which lists the archive afresh."""
    exe, ran = recorder
    boot = tmp_path / "boot_id"
    boot.write_text("11111111-aaaa\n")
    monkeypatch.setattr(_spool, "BOOT_ID", str(boot))
    data = tmp_path / "data"
    (data / "pg_wal").mkdir(parents=True)
    spool = str(data / "pgrecovery_spool")
    queue(Path(spool))
    end, history = segment_name(1, 9), "00000002.history"
    listed_at = _absent.uptime_cs()
    assert listed_at is not None
    if case == "expired":
        listed_at -= _absent.VALID + 1
    tag = _spool.repo_tag("file:///another/repo" if case == "another repository" else URL)
    _absent.publish(spool, tag, [end, history], listed_at)
    command = restore_command(URL, str(exe), key_file="/keys/k")  # (composes with the other options)
    if case == "another boot":
        boot.write_text("22222222-bbbb\n")
    asked = segment_name(1, 10) if case == "not listed" else end
    if case == "published":
        assert run(command, data, "pg_wal/RECOVERYXLOG", end) == 1
        assert run(command, data, "pg_wal/RECOVERYHISTORY", history) == 1
        assert not ran.exists(), "Python ran for a file known to be missing"
    else:
        assert run(command, data, "pg_wal/RECOVERYXLOG", asked) == 0  # the recorder's 0
        assert json.loads(ran.read_text())[-2:] == [asked, "pg_wal/RECOVERYXLOG"]


def test_without_prefetch_or_fast_there_is_no_shell_part() -> None:
    assert "mv -fT" not in restore_command(URL, prefetch=False)
    assert "mv -fT" not in restore_command(URL, fast=False)


# -- the filler ------------------------------------------------------------------------------------------------


def archive(tmp_path: Path, count: int) -> tuple[WalArchiver, dict[str, bytes]]:
    repo = Repository(str(tmp_path / "repo"))
    archiver = WalArchiver(repo, prefetch=3, parallel=2)
    wal = tmp_path / "src"
    wal.mkdir()
    content = {}
    for n in range(1, count + 1):
        name = segment_name(1, n)
        content[name] = hashlib.sha256(name.encode()).digest() * 2048
        (wal / name).write_bytes(content[name])
        archiver.push(wal / name)
    return archiver, content


def test_the_filler_follows_what_recovery_takes_and_then_stops(tmp_path: Path) -> None:
    archiver, content = archive(tmp_path, 9)
    spool = tmp_path / "spool"
    _spool.set_source(str(spool), _spool.repo_tag(archiver.repo.url))
    got: list[str] = []
    filler = threading.Thread(target=lambda: got.extend(_prefetch.fill(archiver, segment_name(1, 1), str(spool))))
    filler.start()
    q = spool / "prefetch"
    taken = []
    for n in range(2, 10):  # recovery takes 2, 3, ... as the shell does: a rename out of the queue
        name = segment_name(1, n)
        deadline = time.monotonic() + 20
        while not (q / name).exists():
            assert time.monotonic() < deadline, f"{name} never queued (queue: {sorted(p.name for p in q.iterdir())})"
            time.sleep(0.01)
        (q / name).rename(tmp_path / "taken")
        assert (tmp_path / "taken").read_bytes() == content[name]
        taken.append(name)
    filler.join(timeout=20)
    assert not filler.is_alive()
    assert sorted(got) == taken  # every segment downloaded once, and none past the archive's end


def test_the_filler_stops_when_recovery_takes_nothing(tmp_path: Path) -> None:
    archiver, _ = archive(tmp_path, 8)
    spool = tmp_path / "spool"
    _spool.set_source(str(spool), _spool.repo_tag(archiver.repo.url))
    t0 = time.monotonic()
    got = _prefetch.fill(archiver, segment_name(1, 1), str(spool), linger=0.3)
    assert sorted(got) == [segment_name(1, n) for n in (2, 3, 4)]  # two at a time: in the order they end
    assert time.monotonic() - t0 < 10
    stopped = _prefetch.fill(archiver, segment_name(1, 1), str(spool), linger=30, stop=lambda: True)
    assert stopped == []  # the queue is full and the caller says stop: at once


def absent(spool: Path) -> list[str]:
    words = (spool / "prefetch" / _absent.NAME).read_text().split()
    return words[3:]


def at_the_end(tmp_path: Path) -> tuple[WalArchiver, Path, _absent.Absences, _prefetch._Flight]:
    """A filler's downloads after segment 1 of an archive of two: segment 2 started, segment 3 not archived."""
    archiver, _ = archive(tmp_path, 2)
    spool = tmp_path / "spool"
    _spool.set_source(str(spool), _spool.repo_tag(archiver.repo.url))
    absences = _absent.Absences(archiver, str(spool), 1)
    flight = _prefetch._Flight(archiver, str(spool / "prefetch"), False, absences)
    with ThreadPoolExecutor(2) as pool:
        flight.start(pool, [segment_name(1, n) for n in (2, 3)], None)
    return archiver, spool, absences, flight


def test_the_filler_publishes_the_end_it_reached_and_resumes_once_the_archive_grows(tmp_path: Path) -> None:
    archiver, spool, absences, flight = at_the_end(tmp_path)
    assert flight.ended
    assert absences.end == segment_name(1, 3)
    # timeline 1 never has a history file; timeline 2 has no directory in the archive
    assert absent(spool) == [segment_name(1, 3), "00000001.history", "00000002.history"]
    wal = tmp_path / "src"
    (wal / segment_name(1, 3)).write_bytes(b"archived since" * 1000)
    archiver.push(wal / segment_name(1, 3))
    flight.refresh()
    assert not flight.ended
    assert absences.end is None
    assert absent(spool) == ["00000001.history", "00000002.history"]
    assert segment_name(1, 3) in flight.index


def test_a_listing_that_fails_withdraws_what_was_published_and_the_filler_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archiver, spool, _absences, flight = at_the_end(tmp_path)
    assert absent(spool) == [segment_name(1, 3), "00000001.history", "00000002.history"]

    def outage() -> list[int]:
        raise OSError("connection refused")

    monkeypatch.setattr(archiver, "timelines", outage)
    flight.refresh()  # no exception: the filler's loop goes on
    assert not (spool / "prefetch" / _absent.NAME).exists()
    monkeypatch.undo()
    flight.refresh()
    assert absent(spool) == [segment_name(1, 3), "00000001.history", "00000002.history"]


def test_a_filler_that_stops_at_the_end_leaves_the_asks_past_it_answered(tmp_path: Path) -> None:
    archiver, _ = archive(tmp_path, 3)
    spool = tmp_path / "spool"
    _spool.set_source(str(spool), _spool.repo_tag(archiver.repo.url))
    _prefetch.fill(archiver, segment_name(1, 1), str(spool), linger=0.2)
    assert absent(spool) == [segment_name(1, 4), "00000001.history", "00000002.history"]
    expiry = int((spool / "prefetch" / _absent.NAME).read_text().split()[2])
    now = _absent.uptime_cs()
    assert now is not None
    assert now < expiry <= now + _absent.VALID


def test_a_sweep_as_recovery_moves_leaves_downloads_under_way_alone(tmp_path: Path) -> None:
    """The filler keeps downloads in flight while recovery moves: sweeping the segments recovery passed must not
    remove their temporary files (the downloads failed, and the filler stopped). An earlier filler's leftovers go
    at the first sweep."""
    archiver, _ = archive(tmp_path, 6)
    spool = tmp_path / "spool"
    _spool.set_source(str(spool), _spool.repo_tag(archiver.repo.url))
    q = spool / "prefetch"
    leftover = q / f".{segment_name(1, 9)}.dead.tmp"
    leftover.write_bytes(b"killed half-way")
    queue = _prefetch._Queue(archiver, str(spool), segment_name(1, 1))
    queue.look()
    assert not leftover.exists()
    under_way = q / f".{segment_name(1, 5)}.live.tmp"
    under_way.write_bytes(b"being written")
    (q / segment_name(1, 2)).write_bytes(b"passed")
    (q / segment_name(1, 4)).write_bytes(b"ahead")
    _spool.note_wanted(str(spool), segment_name(1, 3))  # recovery moved on
    queue.look()
    assert sorted(p.name for p in q.iterdir() if p.name not in (".source", ".wanted")) == sorted(
        [under_way.name, segment_name(1, 4)]
    )


# -- archive_command's shell part ------------------------------------------------------------------------------


def test_a_file_made_durable_is_acknowledged_by_the_shell_alone(tmp_path: Path, recorder: tuple[Path, Path]) -> None:
    """The marker's hard link answers for that very file only: not for another file under the same name, not for
    another repository's command."""
    exe, ran = recorder
    data = tmp_path / "data"
    (data / "pg_wal").mkdir(parents=True)
    path = data / "pg_wal" / SEG
    path.write_bytes(b"a completed segment")
    command = archive_command(URL, str(exe))
    _spool.write_marker(_spool.default_spool(str(path)), str(path), os.stat(path), "ab" * 32, _spool.repo_tag(URL))
    assert run(command, data, f"pg_wal/{SEG}", SEG) == 0
    assert not ran.exists(), "Python ran for a file the worker had made durable"
    assert run(archive_command("file:///another/repo", str(exe)), data, f"pg_wal/{SEG}", SEG) == 0
    assert ran.exists()  # another repository: asked in Python
    ran.unlink()
    os.rename(path, data / "pg_wal" / segment_name(1, 9))  # recycled, and the name written anew
    path.write_bytes(b"another segment, same name")
    assert run(command, data, f"pg_wal/{SEG}", SEG) == 0
    assert json.loads(ran.read_text())[-1] == f"pg_wal/{SEG}"


def test_no_link_for_a_file_replaced_since_it_was_read(tmp_path: Path) -> None:
    path = tmp_path / "pg_wal" / SEG
    path.parent.mkdir()
    path.write_bytes(b"read")
    st = os.stat(path)
    path.unlink()
    path.write_bytes(b"written after the read")
    assert not _spool.link_ack(str(tmp_path / "spool"), str(path), st, "tag")
    assert os.listdir(tmp_path / "spool" / "acked" / "tag") == []


def test_the_commands_compose_like_plain_commands(tmp_path: Path, recorder: tuple[Path, Path]) -> None:
    """``A && B`` runs B after the shell part answered; ``false && A`` fails: an exit or exec in the shell part
    must end only its own command (a second archive destination skipped silently would be lost WAL)."""
    exe, _ran = recorder
    data = tmp_path / "data"
    (data / "pg_wal").mkdir(parents=True)
    path = data / "pg_wal" / SEG
    path.write_bytes(b"a completed segment")
    _spool.write_marker(_spool.default_spool(str(path)), str(path), os.stat(path), "ab" * 32, _spool.repo_tag(URL))
    second = tmp_path / "second"
    command = archive_command(URL, str(exe))
    assert run(f"{command} && touch {second}", data, f"pg_wal/{SEG}", SEG) == 0
    assert second.exists()
    assert run(f"false && {command}", data, f"pg_wal/{SEG}", SEG) != 0
    queue(data / "pgrecovery_spool", **{SEG: b"queued"})
    second.unlink()
    fetch = restore_command(URL, str(exe))
    assert run(f"{fetch} && touch {second}", data, "pg_wal/RECOVERYXLOG", SEG) == 0
    assert second.exists()
    assert (data / "pg_wal" / "RECOVERYXLOG").read_bytes() == b"queued"
    second.unlink()
    gone = segment_name(1, 9)
    _absent.publish(str(data / "pgrecovery_spool"), _spool.repo_tag(URL), [gone], _absent.uptime_cs())
    assert run(f"{fetch} || touch {second}", data, "pg_wal/RECOVERYXLOG", gone) == 0
    assert second.exists()  # "not archived" ended only its own command
    assert run(f"false && {fetch}", data, "pg_wal/RECOVERYXLOG", SEG) != 0


def test_an_archive_command_too_long_for_postgresql_15_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="pgrecovery.wal"):
        archive_command(URL)
        assert not caplog.records
        archive_command(URL, spool_dir="/var/spool/" + "deep/" * 160)
    assert "PostgreSQL 15 and older cut it at 1,024" in caplog.text
