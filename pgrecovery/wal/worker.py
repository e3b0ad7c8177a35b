"""The WAL worker: a process that archive_command hands its segments to (and restore_command the files the prefetch
queue does not hold), so that each call costs a socket round trip instead of a Python start-up, imports, new
storage connections and a fresh listing.

archive_command stays a standard-library call (`pgrecovery._walclient`): it asks the worker over a Unix socket
in the spool directory (``worker.sock``, mode 0600 in a 0700 directory) to push ``%p`` and returns 0 only on the
worker's "ok", which the worker sends once the segment is durable in the repository (the same guarantee as an
in-process push). With no worker running it starts one (detached, holding ``worker.lock`` for its whole life, so
at most one runs per spool) and waits for it; a worker that dies, hangs past the client's timeout, or serves
another repository is not trusted: the call then pushes in-process as before. Nothing here is ever the only
record of a segment: the worker only writes to the repository and the spool's markers.

Meanwhile the worker pushes ahead the segments waiting in ``pg_wal/archive_status/*.ready`` (``parallel`` at
once; archive_status is looked at every 10 ms, so a new segment's push starts while PostgreSQL is still starting
its archive_command), so that the calls PostgreSQL makes for them next are answered from their markers at once:
by the shell alone, through the marker's hard link (`pgrecovery.wal.commands.archive_command`). It keeps the
repository's connections, the compressor and the archive's listing warm: on object stores with conditional
writes each new segment costs one request (the conditional PUT), the listing being read once per worker and
kept up to date with what it stores. It exits after ``idle`` seconds without work, or two once its server has
stopped (no ``postmaster.pid``), or at once (once the work under way is done) when asked to stop
(`pgrecovery.cluster.LocalCluster.stop` asks, after its server has stopped).

For restore_command it delivers a file verified (as ``wal-fetch`` does) and answers a file the archive lacks (the
history probes at start, the end of the archive) after one fresh listing of its timeline, with no program start.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import selectors
import socket
import subprocess
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Final

from .. import _spool, _walclient, _walnames
from .._fastpath import queue_answer
from .._fsutil import postmaster_pid, process_alive
from ..codec import compressor
from ..pgtools import as_user, child_env
from ._filling import SegmentFiller
from ._inotify import DirWatch
from ._prefetch import FillProgress
from .archiver import PushResult, WalArchiver, _Listings
from .index import single

log = logging.getLogger("pgrecovery.wal")
# while its server runs: on a quiet primary a segment may come every few minutes (archive_timeout), and a worker
# gone between them made every call pay a worker's start (0.2-0.5 s, its imports and connections) instead of ~30 ms
IDLE: Final = 600.0
_POLL: Final = 0.01  # how often archive_status is looked at: a new .ready file is pushed before its call comes
# with inotify (a new .ready file wakes the loop, and so does the end of a push) the poll only backs it up: an
# idle worker polling every 10 ms cost 5-8 % of a core for as long as it stayed (10 minutes, or all along on a
# quiet primary), 1 % now (measured)
_POLL_WATCHED: Final = 0.5
_GONE: Final = 2.0  # seconds without work after which a worker whose server stopped exits
# a .ready file whose push ahead failed is tried again after 1, 2, 4 ... up to 60 s (archive_command's own calls
# are not held back: PostgreSQL paces them); without this, a repository that refuses every write made the worker
# read and compress the same segments every 10 ms, a core at 100 % for as long as the outage lasted
_BACKOFF_FIRST: Final = 1.0
_BACKOFF_MAX: Final = 60.0
_QUEUE_WAIT: Final = 20.0  # seconds a fetch waits for the prefetcher's download of the same segment
SERVER_UMASK: Final = 0o077
AWAIT_SERVER: Final = 30.0  # seconds a worker started ahead of its server (`start_for_recovery`) waits for it


def _hold(path: str) -> int | None:
    """A descriptor of ``path`` holding an exclusive flock, or None (no such file, or locked already). The
    archive_command for the file waits for it in the kernel (`pgrecovery.wal.commands`: ``flock -s``) instead of
    polling for the marker: polling forked a ``sleep`` every 2 ms, and those forks took 3-4 ms of CPU from a
    local push of 15 ms, on two cores (measured)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _release(fd: int, _fut: object) -> None:
    os.close(fd)


class ArchivingWorker:
    """Serves push requests for the WAL files of ``wal_dir`` into ``archiver``'s repository (see the module)."""

    def __init__(
        self, archiver: WalArchiver, spool: str, wal_dir: str, *, idle: float = IDLE, await_server: float = 0.0
    ) -> None:
        self.archiver = archiver
        self.spool = os.path.abspath(spool)
        self.wal_dir = os.path.abspath(wal_dir)
        self.idle = idle
        self.tag = _spool.repo_tag(archiver.repo.url)
        self._listings = _Listings(archiver, kept=True)
        self._pool = ThreadPoolExecutor(max(1, archiver.parallel), thread_name_prefix="wal-worker")
        self._busy: dict[str, Future[PushResult]] = {}
        self._pushed: set[str] = set()  # .ready files pushed already (so each poll reads no marker twice)
        self._failed: dict[str, tuple[float, int]] = {}  # .ready files whose push failed: (retry after, failures)
        self._lock = threading.Lock()
        self._last_work = time.monotonic()
        self._prefetcher: threading.Thread | None = None
        self._progress: FillProgress | None = None  # the running prefetcher's downloads
        self._filler: SegmentFiller | None = None  # set while serving
        self._wake_w = -1  # the write end of the loop's wake-up pipe, while serving
        self._stopping = False
        # started ahead of its server (`start_for_recovery`): until then, or for ``await_server`` seconds, a data
        # directory without postmaster.pid counts as one whose server is starting
        self._awaiting = time.monotonic() + await_server if await_server > 0 else 0.0

    # -- pushing ---------------------------------------------------------------------------------------------
    def _submit(self, name: str) -> Future[PushResult]:
        """The push of ``name`` under way, or a new one."""
        with self._lock:
            fut = self._busy.get(name)
            if fut is None or fut.done():  # a finished push is not reused: its marker answers, or it runs again
                path = os.path.join(self.wal_dir, name)
                filling = self._filler.take(name) if self._filler is not None else None
                ahead = filling.finish if filling is not None else None
                held = _hold(path)
                fut = self._pool.submit(self.archiver._push_one, path, self.spool, self._listings, ahead)
                if held is not None:  # released once the push has ended (its marker written, or not)
                    fut.add_done_callback(functools.partial(_release, held))
                fut.add_done_callback(self._wake)  # the loop starts the next push ahead at once
                self._busy[name] = fut
            return fut

    def push(self, path: str) -> str:
        """The reply to a push request: ``ok <sha256>`` once durable, else ``err <one line>``."""
        abspath = os.path.abspath(path)
        name = os.path.basename(abspath)
        if os.path.dirname(abspath) != self.wal_dir or not _walnames.is_wal_file(name):
            return f"err not a WAL file of {self.wal_dir}"
        try:
            done = _spool.pushed_already(abspath, self.spool, self.tag)
            result = done or self._submit(name).result().sha256
        except Exception as e:  # noqa: BLE001 - the client reports it, or pushes itself
            return "err " + (" ".join(str(e).split()) or type(e).__name__)
        finally:
            self._last_work = time.monotonic()
        return f"ok {result}"

    def _ahead(self) -> None:
        """Start pushes for the ``.ready`` segments not yet archived (at most ``parallel`` under way)."""
        with self._lock:
            finished = [name for name, f in self._busy.items() if f.done()]
            for name in finished:
                if self._busy.pop(name).exception() is None:
                    self._pushed.add(name)
                    self._failed.pop(name, None)
                else:
                    self._back_off(name)
            running = len(self._busy)
        if finished:  # markers of files gone from pg_wal, swept when pushes end (not on every poll)
            with contextlib.suppress(OSError):
                _spool.sweep_markers(self.spool, self.wal_dir)
        room = max(0, self.archiver.parallel - running)
        if room == 0:
            return
        ready = _spool.ready_files(self.wal_dir)
        self._pushed.intersection_update(ready)  # only a hint for this loop: archive_command checks the marker
        if self._failed:  # forget the files archived since (by archive_command's own calls)
            waiting = set(ready)
            self._failed = {n: v for n, v in self._failed.items() if n in waiting}
        now = time.monotonic()
        for name in ready:
            if room == 0:
                break
            if name in self._busy or name in self._pushed or self._failed.get(name, (0.0, 0))[0] > now:
                continue
            if _spool.pushed_already(os.path.join(self.wal_dir, name), self.spool, self.tag):
                self._pushed.add(name)
                continue
            self._submit(name)
            self._last_work = time.monotonic()
            room -= 1

    def _back_off(self, name: str) -> None:
        """Hold back pushing ``name`` ahead after a failure (the failure itself went to whoever asked, or is
        logged once per retry here)."""
        _, failures = self._failed.get(name, (0.0, 0))
        delay = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2**failures)
        self._failed[name] = (time.monotonic() + delay, failures + 1)
        log.info("%s: push ahead failed (%d in a row); next try in %.0f s", name, failures + 1, delay)

    # -- fetching --------------------------------------------------------------------------------------------
    def fetch(self, name: str, dest: str) -> str:
        """The reply to a fetch request: ``ok`` once ``dest`` holds the verified file, ``miss`` when the archive
        does not have it (the timeline's listing read again first: a negative answer is always fresh), else
        ``err <one line>``."""
        dest = os.path.abspath(dest)
        if os.path.dirname(dest) != self.wal_dir or not _walnames.is_wal_file(name):
            return f"err not a WAL file of {self.wal_dir}"
        queued = self._from_queue(name, dest)
        if queued is not None:
            self._last_work = time.monotonic()
            return queued
        try:
            # a known name needs no listing (archived WAL is never replaced); an unknown one is listed afresh
            obj = single(name, self._listings.objects(name, fresh=True))
            if obj is None:
                return "miss" if self.archiver.timelines() else "err the repository holds no WAL archive"
            self.archiver._download(obj, dest)
        except Exception as e:  # noqa: BLE001 - the client hands it to the full CLI, which reports it
            return "err " + (" ".join(str(e).split()) or type(e).__name__)
        finally:
            self._last_work = time.monotonic()
        if _walnames.is_segment(name) and self.archiver.prefetch > 0:
            with contextlib.suppress(OSError):
                _spool.note_wanted(self.spool, name)
            self.prefetch(name)
        return "ok"

    def _from_queue(self, name: str, dest: str) -> str | None:
        """A segment the prefetcher of this process is downloading (the server asked before it was queued: the
        shell found no file), once there: ``staged`` (in pg_wal, where the server is to read it: restore_command
        exits 1, as the shell does for a staged segment) or ``ok`` (renamed to ``dest``); None: not queued."""
        with self._lock:
            alive = self._prefetcher is not None and self._prefetcher.is_alive()
            progress = self._progress if alive else None
        if progress is None or not _walnames.is_segment(name):
            return None
        progress.wait_for(name, _QUEUE_WAIT)
        return queue_answer(name, dest, self.spool, self.tag)

    def prefetch(self, name: str) -> str:
        """Keep the prefetch queue filled after ``name`` in a thread of this process (at most one runs)."""
        if not _walnames.is_segment(name):
            return "err not a segment"
        with self._lock:
            if self._prefetcher is None or not self._prefetcher.is_alive():
                self._progress = FillProgress()
                self._prefetcher = threading.Thread(target=self._prefetch, args=(name, self._progress), daemon=True)
                self._prefetcher.start()
        return "ok"

    def _prefetch(self, name: str, progress: FillProgress) -> None:
        try:
            stop = lambda: self._stopping or not self._server_runs()  # noqa: E731
            # at once when a prefetch process holds the queue
            # started ahead of its server, and none seen yet: perhaps while the data directory is restored
            restoring = self._awaiting > 0 and postmaster_pid(os.path.dirname(self.wal_dir)) is None
            self.archiver.run_prefetch(name, self.spool, stop=stop, progress=progress, restoring=restoring)
        except Exception as e:  # noqa: BLE001 - restore_command fetches what the queue lacks
            log.info("prefetch after %s: %s", name, e)
        finally:
            progress.started.set()  # (also when another process held the queue: nothing of ours to wait for)
            self._last_work = time.monotonic()

    # -- serving ---------------------------------------------------------------------------------------------
    def _answer(self, conn: socket.socket) -> None:
        self._last_work = time.monotonic()
        with conn:
            conn.settimeout(10)
            data = b""
            with contextlib.suppress(OSError):
                while not data.endswith(b"\n") and len(data) < 8192:
                    more = conn.recv(4096)
                    if not more:
                        return
                    data += more
            reply = self._reply(data.decode(errors="replace").strip())
            with contextlib.suppress(OSError):
                conn.sendall(reply.encode() + b"\n")

    def _reply(self, request: str) -> str:
        verb, _, rest = request.partition(" ")
        tag, _, path = rest.partition(" ")
        if verb == "ping":
            return f"ok {self.tag}"
        if verb == "stop":  # its server stopped (LocalCluster.stop): leave once the work under way is done
            self._stopping = True
            return "ok"
        if verb not in ("push", "fetch", "prefetch") or not path:
            return "err unknown request"
        if tag != self.tag:
            return "err this worker serves another repository"
        if verb == "prefetch":
            return self.prefetch(path)
        if verb == "fetch":
            name, _, dest = path.partition(" ")
            return self.fetch(name, dest)
        return self.push(path)

    def serve(self, lock_fd: int | None = None, *, prefetch_after: str | None = None) -> bool:
        """Serve until idle; False (at once) when another worker holds the spool's lock. ``prefetch_after``: start
        filling the prefetch queue after that segment at once (a recovery about to start)."""
        with _spool.spool_lock(self.spool, fd=lock_fd, name=_walclient.LOCK_NAME) as got:
            if not got:
                return False
            listener = _walclient.listen(self.spool)  # (first: it sets the process's umask for a moment)
            _walclient.mark_worker(self.spool, self.tag, os.getpid())
            packer = lambda: compressor(self.archiver.compression, self.archiver.level, threads=1)  # noqa: E731
            self._filler = SegmentFiller(self.wal_dir, self.archiver.segment_size, packer).start()
            if prefetch_after is not None:  # before the first request is accepted: a fetch of a segment it has
                self.prefetch(prefetch_after)  # yet to download waits for it (`_from_queue`)
            try:
                self._loop(listener)
            finally:
                self._filler.stop()
                _walclient.unmark_worker(self.spool, self.tag, os.getpid())
                with contextlib.suppress(OSError):
                    os.unlink(_walclient.socket_path(self.spool))  # before the lock goes: no new client waits
                listener.close()
                self._pool.shutdown(wait=True)
                if self._wake_w >= 0:  # no push left to wake anyone
                    os.close(self._wake_w)
                    self._wake_w = -1
                with contextlib.suppress(OSError):
                    _spool.sweep_markers(self.spool, self.wal_dir)  # no link outlives its file in pg_wal
        return True

    def _wake(self, _fut: object = None) -> None:
        with contextlib.suppress(OSError):  # full (a wake-up is pending anyway) or closed (the loop has ended)
            os.write(self._wake_w, b"x")

    def _loop(self, listener: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        sel.register(listener, selectors.EVENT_READ, "listen")
        wake_r, self._wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(self._wake_w, False)
        sel.register(wake_r, selectors.EVENT_READ, "wake")
        # a new .ready file wakes the loop at once (the poll stays, for where inotify is missing or overflows)
        watch = DirWatch.open(os.path.join(self.wal_dir, "archive_status"))
        if watch is not None:
            sel.register(watch.fd, selectors.EVENT_READ, "watch")
        try:
            self._run(sel, listener, watch, wake_r)
        finally:
            sel.close()
            os.close(wake_r)  # the write end stays open until the pushes under way have ended (serve)
            if watch is not None:
                watch.close()

    def _run(self, sel: selectors.BaseSelector, listener: socket.socket, watch: DirWatch | None, wake: int) -> None:
        poll = _POLL if watch is None else _POLL_WATCHED
        while True:
            for key, _ in sel.select(poll):
                if key.data == "watch":
                    assert watch is not None
                    watch.drain()
                    continue
                if key.data == "wake":
                    with contextlib.suppress(OSError):
                        os.read(wake, 4096)
                    continue
                with contextlib.suppress(BlockingIOError, InterruptedError):
                    conn, _addr = listener.accept()
                    conn.setblocking(True)
                    threading.Thread(target=self._answer, args=(conn,), daemon=True).start()
            try:
                self._ahead()
            except OSError as e:
                log.info("archive-ahead: %s", e)
            with self._lock:
                busy = any(not f.done() for f in self._busy.values())
                busy = busy or (self._prefetcher is not None and self._prefetcher.is_alive())
            quiet = time.monotonic() - self._last_work
            if not busy and (self._stopping or quiet > self.idle or (quiet > _GONE and not self._server_runs())):
                return

    def _server_runs(self) -> bool:
        """Whether the data directory of ``wal_dir`` has a postmaster.pid whose process lives (a stopped server
        needs no worker; one killed leaves its postmaster.pid behind)."""
        pid = postmaster_pid(os.path.dirname(self.wal_dir))
        if pid is None:
            return time.monotonic() < self._awaiting  # a server about to start
        self._awaiting = 0.0  # it started: from now on, no postmaster.pid means it stopped
        # unreadable as a pid: assume it runs (the idle time still ends the worker)
        return pid <= 0 or process_alive(pid)


def start_for_recovery(
    repo_url: str,
    pgdata: str,
    first: str,
    *,
    python: str | None = None,
    run_as: str | None = None,
    key_file: str | None = None,
    segment_size: int = _walnames.DEFAULT_SEGMENT_SIZE,
) -> subprocess.Popen[bytes] | None:
    """Start the WAL worker of data directory ``pgdata`` before its server starts archive recovery from
    ``repo_url`` (with pgrecovery's restore_command and the default spool), filling the prefetch queue from
    segment ``first`` (the backup's first) at once; the process started (None: one runs already, or none may).

    The worker is the one restore_command would start at its first call, only earlier: its imports and the
    archive's listing are done, and the first segments downloaded (staged in ``pg_wal``), while the server
    starts, instead of after the server's first ask. It runs as the server's OS user (``run_as``; the spool and
    the lock are given to the owner of ``pgdata``), with the environment the server gets; it waits up to
    `AWAIT_SERVER` seconds for the server, then leaves as any worker whose server stopped does."""
    segno = _walnames.segment_number(first, segment_size)
    if not _walclient.enabled() or segno < 1:
        return None
    spool, wal_dir = os.path.join(pgdata, _spool.SPOOL_NAME), os.path.join(pgdata, "pg_wal")
    if not _walclient.usable(spool):
        return None
    after = _walnames.segment_name(_walnames.timeline_of(first), segno - 1, segment_size)
    st = os.stat(pgdata)
    return _walclient.spawn(
        spool,
        repo_url,
        wal_dir,
        key_file,
        python=python,
        options=["--prefetch-after", after, "--await-server", str(AWAIT_SERVER)],
        env=child_env(),  # what the server gets (pgtools starts it)
        owner=(st.st_uid, st.st_gid) if st.st_uid != os.getuid() else None,
        prefix=as_user([], run_as),
        # the umask PostgreSQL gives its children (and so the worker restore_command starts): nothing it writes
        # in the spool is readable by others
        umask=SERVER_UMASK,
    )


__all__ = ["AWAIT_SERVER", "IDLE", "ArchivingWorker", "start_for_recovery"]
