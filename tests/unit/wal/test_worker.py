"""The archiving worker, through archive_command's own entry (`_fastpath.fast_command`): a push is acknowledged only
once the segment is in the repository, .ready segments are pushed ahead, and a worker that hangs, dies or serves
another repository is never trusted (the call then returns None: the full CLI pushes in-process)."""

from __future__ import annotations

import fcntl
import hashlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pgtesting import pg_substitute, wal_workers

from pgrecovery import Repository, _fastpath, _spool, _walclient
from pgrecovery._walnames import segment_name
from pgrecovery.wal.archiver import WalArchiver
from pgrecovery.wal.commands import archive_command

SEG, NEXT, THIRD = (segment_name(1, n) for n in (3, 4, 5))


@pytest.fixture
def pgdata(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv(_walclient.IDLE_ENV, "30")
    (tmp_path / "data" / "pg_wal" / "archive_status").mkdir(parents=True)
    (tmp_path / "data" / "postmaster.pid").write_text("1\n")  # a "running server": the worker stays
    yield tmp_path / "data"
    for pid in wal_workers(tmp_path):
        os.kill(pid, signal.SIGCONT)
        os.kill(pid, signal.SIGKILL)


def wal(pgdata: Path, name: str, ready: bool = False) -> str:
    path = pgdata / "pg_wal" / name
    path.write_bytes(hashlib.sha256(name.encode()).digest() * 4096)
    if ready:
        (pgdata / "pg_wal" / "archive_status" / f"{name}.ready").write_bytes(b"")
    return str(path)


def archived(repo: Repository, name: str, path: str) -> bool:
    obj = WalArchiver(repo).find(name)
    return obj is not None and obj.sha256 == hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_a_push_is_acknowledged_once_stored_and_ready_segments_go_ahead(pgdata: Path, tmp_path: Path) -> None:
    url = f"file://{tmp_path}/repo"
    repo = Repository(url)
    path, ahead = wal(pgdata, SEG), wal(pgdata, NEXT, ready=True)
    assert _fastpath.fast_command(["wal-push", "--repo", url, path]) == 0
    assert archived(repo, SEG, path)
    assert len(wal_workers(tmp_path)) == 1
    spool = _spool.default_spool(path)
    deadline = time.monotonic() + 20
    while not _spool.pushed_already(ahead, spool, _spool.repo_tag(url)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert archived(repo, NEXT, ahead)  # pushed ahead: the server's call for it is answered by its marker
    assert _fastpath.fast_command(["wal-push", "--repo", url, ahead]) == 0
    # a worker serves one repository: a call for another is not answered by it
    reply = _walclient.ask(spool, f"push {_spool.repo_tag('file:///elsewhere')} {path}", 5)
    assert reply is not None
    assert reply.startswith("err ")
    assert (
        _walclient.ask(spool, f"push {_spool.repo_tag(url)} /etc/passwd", 5) == f"err not a WAL file of {pgdata}/pg_wal"
    )
    # its server stopped: the worker leaves soon after
    (pgdata / "postmaster.pid").unlink()
    deadline = time.monotonic() + 20
    while wal_workers(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert wal_workers(tmp_path) == []
    assert not os.path.exists(_walclient.socket_path(spool))


def test_a_hung_or_killed_worker_is_not_trusted(pgdata: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"file://{tmp_path}/repo"
    repo = Repository(url)
    first = wal(pgdata, SEG)
    assert _fastpath.fast_command(["wal-push", "--repo", url, first]) == 0
    (pid,) = wal_workers(tmp_path)
    os.kill(pid, signal.SIGSTOP)  # hung: the call gives up after the timeout, for the CLI to push in-process
    monkeypatch.setenv(_walclient.TIMEOUT_ENV, "1")
    second = wal(pgdata, NEXT)
    started = time.monotonic()
    assert _fastpath.fast_command(["wal-push", "--repo", url, second]) is None
    assert time.monotonic() - started < 10
    os.kill(pid, signal.SIGKILL)  # killed: the next call starts a new worker
    monkeypatch.setenv(_walclient.TIMEOUT_ENV, "60")  # (a loaded machine may take more than 1 s to answer)
    spool = _spool.default_spool(first)
    deadline = time.monotonic() + 10  # gone once nothing takes a question (its memory goes before its socket)
    while _walclient.ask(spool, "ping", 0.2) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    third = wal(pgdata, THIRD)
    assert _fastpath.fast_command(["wal-push", "--repo", url, third]) == 0
    assert archived(repo, THIRD, third)
    assert wal_workers(tmp_path) not in ([], [pid])


def test_a_data_directory_too_deep_for_a_socket_address_still_gets_a_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A socket address holds about 100 bytes of path; a data directory deeper than that (a long mount point) is
    served all the same: the socket is reached through a descriptor of the spool directory."""
    monkeypatch.setenv(_walclient.IDLE_ENV, "30")
    deep = tmp_path / ("d" * 60) / ("e" * 60) / "data"
    (deep / "pg_wal" / "archive_status").mkdir(parents=True)
    (deep / "postmaster.pid").write_text("1\n")
    url = f"file://{tmp_path}/repo"
    try:
        path = wal(deep, SEG)
        spool = _spool.default_spool(path)
        assert len(_walclient.socket_path(spool)) > 108
        assert _fastpath.fast_command(["wal-push", "--repo", url, path]) == 0
        assert archived(Repository(url), SEG, path)
        assert len(wal_workers(tmp_path)) == 1
        assert _walclient.ask(spool, "ping", 5) == f"ok {_spool.repo_tag(url)}"
    finally:
        for pid in wal_workers(tmp_path):
            os.kill(pid, signal.SIGKILL)


def test_a_caller_stops_waiting_when_the_worker_another_caller_started_fails(
    pgdata: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two archive_command calls at once: one starts the worker, the other waits for it to listen. If that worker
    fails at start-up (it notes why in ``worker.failed``), the waiting call hands over to the full CLI at once
    instead of waiting out the start-up time (30 s)."""
    path = wal(pgdata, SEG)
    spool = _spool.default_spool(path)
    os.makedirs(spool, exist_ok=True)
    fd = os.open(os.path.join(spool, _walclient.LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)  # "another caller's worker is starting": this call starts none
    failing = threading.Timer(0.5, lambda: Path(spool, _walclient.FAILED_NAME).write_text("wal-worker: broken\n"))
    failing.start()
    try:
        started = time.monotonic()
        assert _fastpath.fast_command(["wal-push", "--repo", f"file://{tmp_path}/repo", path]) is None
        assert time.monotonic() - started < 10
    finally:
        failing.join()
        os.close(fd)


def test_the_worker_can_be_turned_off(pgdata: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_walclient.WORKER_ENV, "off")
    path = wal(pgdata, SEG)
    assert _fastpath.fast_command(["wal-push", "--repo", f"file://{tmp_path}/repo", path]) is None
    assert wal_workers(tmp_path) == []


def test_restore_command_gets_files_and_misses_from_the_worker(pgdata: Path, tmp_path: Path) -> None:
    url = f"file://{tmp_path}/repo"
    source = tmp_path / "source"
    (source / "pg_wal").mkdir(parents=True)
    path = wal(source, SEG)
    WalArchiver(Repository(url), spool_dir=str(tmp_path / "source-spool")).push(path)
    dest = str(pgdata / "pg_wal" / "RECOVERYXLOG")
    argv = ["wal-fetch", "--repo", url, "--no-prefetch"]
    assert _fastpath.fast_command([*argv, SEG, dest]) == 0  # no prefetch queue: the worker delivers it
    assert Path(dest).read_bytes() == Path(path).read_bytes()
    assert len(wal_workers(tmp_path)) == 1
    assert _fastpath.fast_command([*argv, NEXT, dest]) == 1  # the end of the archive: a miss, from the worker
    assert _fastpath.fast_command([*argv, "00000002.history", dest]) == 1  # the start-up history probe
    assert Path(dest).read_bytes() == Path(path).read_bytes()  # a miss leaves what was there
    later = wal(source, NEXT)
    WalArchiver(Repository(url), spool_dir=str(tmp_path / "source-spool")).push(later)
    assert _fastpath.fast_command([*argv, NEXT, dest]) == 0  # archived since: a negative answer is never stale
    assert Path(dest).read_bytes() == Path(later).read_bytes()
    reply = _walclient.ask(_spool.default_spool(dest), f"fetch {_spool.repo_tag(url)} {SEG} /tmp/elsewhere", 5)
    assert reply == f"err not a WAL file of {pgdata}/pg_wal"


def test_a_push_ahead_that_fails_is_retried_with_growing_pauses_not_every_poll(
    pgdata: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A repository that refuses every write (here: its wal directory is a file) must not make the worker read and
    compress the same .ready segments every 10 ms for as long as the outage lasts; archive_command's own calls
    still push at once, and once the repository takes writes again the segments go."""
    from pgrecovery.wal.worker import ArchivingWorker

    root = tmp_path / "repo"
    archiver = WalArchiver(Repository(f"file://{root}"))
    root.mkdir(exist_ok=True)
    (root / "wal").write_bytes(b"not a directory")
    attempts: list[str] = []
    real = archiver._push_one

    def counted(abspath: str, *args: object) -> object:
        attempts.append(os.path.basename(abspath))
        return real(abspath, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(archiver, "_push_one", counted)
    path = wal(pgdata, SEG, ready=True)
    worker = ArchivingWorker(archiver, str(tmp_path / "spool"), str(pgdata / "pg_wal"))
    try:
        deadline = time.monotonic() + 0.8
        while time.monotonic() < deadline:
            worker._ahead()
            time.sleep(0.01)
        assert 1 <= attempts.count(SEG) <= 2, attempts  # tried, then held back 1 s (not ~80 tries)
        before = len(attempts)
        assert worker.push(path).startswith("err ")  # PostgreSQL's own call is not held back, and fails loudly
        assert len(attempts) == before + 1
        (root / "wal").unlink()  # the repository takes writes again
        assert worker.push(path).startswith("ok ")
        assert archived(Repository(f"file://{root}"), SEG, path)
    finally:
        worker._pool.shutdown(wait=True)


def _shell_push(url: str, pgdata: Path, name: str) -> subprocess.CompletedProcess[bytes]:
    """archive_command's shell as PostgreSQL runs it, with an interpreter that does not exist: only the shell's own
    part can answer (exit 0); handing over to Python fails (127) and acknowledges nothing."""
    command = pg_substitute(archive_command(url, python="/nonexistent/python3"), f"pg_wal/{name}", name)
    return subprocess.run(["/bin/sh", "-c", command], cwd=pgdata, capture_output=True, timeout=60)


def test_the_shell_waits_for_a_live_worker_and_acknowledges_only_what_it_stored(pgdata: Path, tmp_path: Path) -> None:
    url = f"file://{tmp_path}/repo"
    repo = Repository(url)
    assert _fastpath.fast_command(["wal-push", "--repo", url, wal(pgdata, SEG)]) == 0  # starts the worker
    (pid,) = wal_workers(tmp_path)
    spool = _spool.default_spool(str(pgdata / "pg_wal" / SEG))
    mark = _walclient.worker_mark(spool, _spool.repo_tag(url))
    assert Path(mark).read_text().strip() == str(pid)
    # a new .ready segment: the worker pushes it ahead, the shell waits for its acknowledgement, no Python starts
    path = wal(pgdata, NEXT, ready=True)
    done = _shell_push(url, pgdata, NEXT)
    assert done.returncode == 0, done.stderr
    assert archived(repo, NEXT, path)
    # a file the worker will not push (no .ready): the wait ends and Python would be asked; nothing is acknowledged
    third = wal(pgdata, THIRD)
    assert _shell_push(url, pgdata, THIRD).returncode == 127
    assert not archived(repo, THIRD, third)
    # a mark left by a worker that died: no wait at all, the same hand-over
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while wal_workers(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    Path(mark).write_text(f"{pid}\n")
    assert _shell_push(url, pgdata, THIRD).returncode == 127
    assert not archived(repo, THIRD, third)


def test_the_shell_waits_in_the_kernel_for_the_push_under_way_not_by_polling(pgdata: Path, tmp_path: Path) -> None:
    """While the worker holds its lock on the WAL file (it does for the whole push), the shell blocks in ``flock``
    and acknowledges the file as soon as the link appears and the lock goes, with no ``sleep`` started (each
    poll forked one, taking CPU from the push). The lock is held longer than the polls alone would wait."""
    url = f"file://{tmp_path}/repo"
    path = wal(pgdata, SEG)
    spool = _spool.default_spool(path)
    tag = _spool.repo_tag(url)
    _walclient.mark_worker(spool, tag, os.getpid())  # "a live worker": this process, which holds the lock
    shims = tmp_path / "bin"
    shims.mkdir()
    (shims / "sleep").write_text(f'#!/bin/sh\necho "$@" >>{tmp_path}/slept\nexec /bin/sleep "$@"\n')
    (shims / "sleep").chmod(0o755)
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)

    def push_done() -> None:
        time.sleep(0.8)  # longer than the shell's polls (150 of 2 ms) would wait
        _spool.write_marker(spool, path, os.stat(path), hashlib.sha256(Path(path).read_bytes()).hexdigest(), tag)
        os.close(fd)

    done_later = threading.Thread(target=push_done)
    done_later.start()
    command = pg_substitute(archive_command(url, python="/nonexistent/python3"), f"pg_wal/{SEG}", SEG)
    env = {**os.environ, "PATH": f"{shims}:{os.environ['PATH']}"}
    done = subprocess.run(["/bin/sh", "-c", command], cwd=pgdata, env=env, capture_output=True, timeout=60)
    done_later.join()
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "slept").exists(), "the shell polled instead of waiting for the lock"


def test_a_new_file_in_a_watched_directory_wakes_the_watch(tmp_path: Path) -> None:
    import select

    from pgrecovery.wal._inotify import DirWatch

    watch = DirWatch.open(str(tmp_path))
    if watch is None:
        pytest.skip("no inotify here")
    try:
        assert select.select([watch.fd], [], [], 0)[0] == []
        (tmp_path / f"{SEG}.ready").write_bytes(b"")
        assert select.select([watch.fd], [], [], 5)[0] == [watch.fd]
        watch.drain()
        assert select.select([watch.fd], [], [], 0)[0] == []
        (tmp_path / "x.tmp").write_bytes(b"")
        os.rename(tmp_path / "x.tmp", tmp_path / f"{NEXT}.ready")
        assert select.select([watch.fd], [], [], 5)[0] == [watch.fd]
    finally:
        watch.close()
    assert DirWatch.open(str(tmp_path / "missing")) is None


def test_a_worker_started_ahead_of_its_server_waits_for_it_and_no_longer(pgdata: Path, tmp_path: Path) -> None:
    """A worker started before its server (``await_server``) counts the server as running until postmaster.pid
    appears, for that long at most; once the server has been seen, a missing postmaster.pid means it stopped."""
    from pgrecovery.wal.worker import ArchivingWorker

    (pgdata / "postmaster.pid").unlink()
    archiver = WalArchiver(Repository(f"file://{tmp_path}/repo"))
    spool, wal_dir = str(pgdata / _spool.SPOOL_NAME), str(pgdata / "pg_wal")
    waiting = ArchivingWorker(archiver, spool, wal_dir, await_server=0.5)
    assert waiting._server_runs()
    time.sleep(0.6)
    assert not waiting._server_runs()  # no server came

    seen = ArchivingWorker(archiver, spool, wal_dir, await_server=60)
    (pgdata / "postmaster.pid").write_text(f"{os.getpid()}\n")
    assert seen._server_runs()
    (pgdata / "postmaster.pid").unlink()
    assert not seen._server_runs()  # it stopped: the wait was for its start only
    assert not ArchivingWorker(archiver, spool, wal_dir)._server_runs()  # a worker the server's call started
