"""Keeping the prefetch queue filled ahead of recovery (the body of `WalArchiver.run_prefetch`).

restore_command takes a queued segment without telling anyone: the fast form of the command (`commands`) moves
it into place from the shell, with no Python at all. So the filler watches the queue itself: a queued segment
that disappears was taken by recovery, and the window moves past it. It keeps ``archiver.prefetch`` segments
ahead of the newest one taken (or asked for, ``.wanted``), downloads up to ``archiver.parallel`` at once, and
stops when the archive has nothing newer, a download fails, or recovery takes nothing for ``linger`` seconds
(restore_command starts a filler again when it has to fetch a segment itself).

Staging: in archive recovery (``recovery.signal``, no ``standby.signal``) of PostgreSQL 15 or later, with the
default spool inside the data directory, each verified segment is also hard-linked into ``pg_wal`` under its own
name (never over a file there), with the ``.done`` status PostgreSQL gives a segment it restored. restore_command's
shell then exits 1 for a segment whose ``pg_wal`` name is that very file (``-ef``), and PostgreSQL reads it from
``pg_wal``, as it does with any segment the archive does not give: no program and no rename per segment, and the
segment's space is freed later by the checkpointer rather than by the startup process before each call. The shell
notes the segment as wanted (a builtin ``echo``), which is how the filler follows recovery. PostgreSQL 15 and
later install no recycled segment into ``pg_wal`` during archive recovery without streaming, so nothing else
writes under those names; a standby (whose WAL receiver writes into ``pg_wal``) is never staged for.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Final

from .. import _spool, _walnames
from .._fsutil import drop_cache, postmaster_pid, process_alive
from ._absent import Absences
from ._inotify import DirWatch

if TYPE_CHECKING:
    from ._layout import WalObject
    from .archiver import WalArchiver

log = logging.getLogger(__package__)
LINGER: Final = 2.0
STAGING_ENV: Final = "PGRECOVERY_WAL_STAGING"  # "off" in the server's environment: never stage in pg_wal
STAGED_LINGER: Final = 60.0  # seconds a filler waits for the server to read the segments it staged
AWAIT_START: Final = 30.0  # seconds a filler started before its server waits for it to start
_POLL: Final = 0.01
_WHILE_RESTORING: Final = 2  # segments queued ahead while the data directory is still being restored
_NICER: Final = 10  # a download thread's nice value over the filler's (see _yield_to_replay)
_DROPS: Final = 3  # cache-drop hints given to each staged segment the server has read past (see _Queue._release)


def _position(name: str, segment_size: int) -> tuple[int, int]:
    return _walnames.segment_number(name, segment_size), _walnames.timeline_of(name)


class _Queue:
    """What the filler knows of the queue: the newest segment recovery has reached, and the names it has seen;
    with staging, the staged segments the server has not opened yet, and a watch on what it opens in pg_wal."""

    def __init__(self, archiver: WalArchiver, spool: str, after: str, stage: str | None = None) -> None:
        self.archiver, self.spool, self.reached = archiver, spool, after
        self.size = archiver.segment_size
        self.seen: set[str] = set()
        self.stage: str | None = None  # the pg_wal segments are staged in, if any
        self.staged: set[str] = set()
        self._reading: list[str] = []  # staged segments the server opened and has not passed yet
        self._passed: list[tuple[str, int]] = []  # segments it passed: (name, cache-drop hints left to give)
        self.watch: DirWatch | None = None
        if stage is not None:
            self._stage_in(stage)
        self.born, self._server_seen = time.monotonic(), False
        self.asked = False  # whether restore_command has asked for a segment yet (``.wanted``)
        self._swept: str | None = None  # where recovery was at the last sweep (none yet: the first one also
        # removes what interrupted downloads of an earlier filler left; later ones leave temporary files alone,
        # which are this filler's downloads under way)

    def look(self) -> tuple[list[str], bool]:
        """(the names missing from the window ahead of recovery, whether recovery moved since the last look)."""
        asked = _spool.read_wanted(self.spool)
        self.asked = self.asked or asked is not None
        moved = False  # asked for a newer segment: a staged one read from pg_wal, or one fetched by wal-fetch
        if asked and _walnames.is_segment(asked) and _position(asked, self.size) > _position(self.reached, self.size):
            self.reached, moved = asked, True
        read = self._staged_read()
        if read and _position(read, self.size) > _position(self.reached, self.size):
            self.reached, moved = read, True
        segno = _walnames.segment_number(self.reached, self.size)
        if self._swept != self.reached:  # only downloads add files, all ahead of recovery: sweep when it moves
            self._sweep(segno)
            self._swept = self.reached
        have = set(_spool.prefetched(self.spool))
        taken = [
            n
            for n in self.seen - have
            if _walnames.is_segment(n) and _position(n, self.size) > _position(self.reached, self.size)
        ]
        self.seen = have
        if taken:  # gone from the queue, and not by our sweep: restore_command took it
            self.reached = max(taken, key=lambda n: _position(n, self.size))
            return [], True
        tli = _walnames.timeline_of(self.reached)
        window = (_walnames.segment_name(tli, segno + i, self.size) for i in range(1, self.archiver.prefetch + 1))
        return [n for n in window if n not in have], moved

    def adopt(self, stage_in: str) -> None:
        """Stage in ``stage_in`` from now on (a data directory that became ready for recovery while this filler,
        started during its restore, was filling the queue), the segments queued already too."""
        queued = _spool.prefetch_dir(self.spool)
        for name in _spool.prefetched(self.spool):
            if _walnames.is_segment(name):
                stage(os.path.join(queued, name), stage_in)
        self._stage_in(stage_in)

    def _stage_in(self, stage_in: str) -> None:
        """Stage in ``stage_in``: watch what the server opens there; the queued segments staged there already (by
        an earlier filler, or `adopt`) and not read yet (their queue link is still there) count as staged."""
        self.stage = stage_in
        self.watch = DirWatch.open(stage_in, opened=True)
        queued = _spool.prefetch_dir(self.spool)
        same = _spool.same_file
        self.staged = {
            n for n in _spool.prefetched(self.spool) if same(os.path.join(queued, n), os.path.join(stage_in, n))
        }

    def _staged_read(self) -> str | None:
        """The newest staged segment the server opened since the last look (the shell's answer notes it as
        wanted too; this also follows an opener that did not ask first); each is noted in ``.taken``."""
        if self.watch is None or not self.staged:
            return None
        opened = list(dict.fromkeys(n for n in self.watch.names() if n in self.staged))
        if not opened or not self.asked:
            # before the server first asked restore_command for a segment, what opens pg_wal's files is its
            # start-up fsyncing the whole data directory (a worker started ahead of the server staged them)
            return None
        self.staged.difference_update(opened)
        with contextlib.suppress(OSError), open(os.path.join(_spool.prefetch_dir(self.spool), ".taken"), "a") as f:
            f.write("".join(n + "\n" for n in opened))
        newest = max(opened, key=lambda n: _position(n, self.size))
        self._release(newest, opened)
        return newest

    def _release(self, newest: str, opened: list[str]) -> None:
        """Drop from the page cache the staged segments the server has read past (it opened a later one): replay
        reads WAL once, in order, so their pages only crowd out others (PostgreSQL releases the WAL it writes the
        same way when nothing will read it again). The pages freed are those the next downloads write into: on a
        virtual machine that backs guest memory lazily, filling 16 MB of page cache never used before took 160-180
        ms against 3 ms for pages just freed (measured), and it was most of the filler's time. The content is
        untouched: a server that reads a segment again (a restart) reads it from disk."""
        self._reading.extend(opened)
        keep = _position(newest, self.size)
        passed = [n for n in self._reading if _position(n, self.size) < keep]
        self._reading = [n for n in self._reading if _position(n, self.size) >= keep]
        # a segment's pages are still dirty when the server passes it (queued files are not fsynced): the first
        # hint starts their write-back, and a hint at one of the next segments drops them
        self._passed = [(n, left - 1) for n, left in self._passed if left > 1] + [(n, _DROPS) for n in passed]
        assert self.stage is not None
        for name, _left in self._passed:
            drop_cache(os.path.join(self.stage, name))

    def close(self) -> None:
        if self.watch is not None:
            self.watch.close()
        if self.stage is not None and not self.recovering():
            # recovery is over: the segments kept queued for its last asks would hold their space once the
            # checkpointer removes them from pg_wal
            with contextlib.suppress(OSError):
                _spool.clear_prefetched(self.spool, keep=lambda n: not _walnames.is_segment(n), temps=False)

    def recovering(self) -> bool:
        """Whether the server is still in archive recovery: it runs (its postmaster.pid names a live process) and
        recovery.signal is there (it removes the file at the end). A server not started yet (no postmaster.pid,
        and none seen by this filler: it was started ahead of its server) counts as recovering for `AWAIT_START`
        seconds."""
        if self.stage is None:
            return True
        data = os.path.dirname(self.stage)
        pid = postmaster_pid(data)
        if pid is None and not self._server_seen:
            alive = time.monotonic() - self.born < AWAIT_START
        else:
            alive = pid is not None and pid > 0 and process_alive(pid)
            self._server_seen = self._server_seen or alive
        return alive and os.path.exists(os.path.join(data, "recovery.signal"))

    def _sweep(self, segno: int) -> None:
        """Drop queued segments recovery is past, and leftovers of interrupted downloads. The segment recovery
        reads stays: at the end of recovery PostgreSQL asks restore_command for it once more, and a staged one is
        then answered by the shell (read it from pg_wal) instead of downloaded again."""

        def ahead(n: str) -> bool:
            return not _walnames.is_segment(n) or _walnames.segment_number(n, self.size) >= segno

        _spool.clear_prefetched(self.spool, keep=ahead, temps=self._swept is None)


class FillProgress:
    """What a filler is downloading, for the WAL worker's fetch in the same process (`pgrecovery.wal.worker`): a
    segment the server asks for while its download is under way is waited for, not downloaded twice."""

    def __init__(self) -> None:
        self.started = threading.Event()  # set once the first downloads began (or the filler ended)
        self.running: frozenset[str] = frozenset()

    def wait_for(self, name: str, timeout: float) -> None:
        """Return once ``name`` is not being downloaded (at most ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        self.started.wait(timeout)
        while name in self.running and time.monotonic() < deadline:
            time.sleep(0.002)


def fill(
    archiver: WalArchiver,
    after: str,
    spool: str,
    *,
    linger: float = LINGER,
    stop: Callable[[], bool] | None = None,
    sync: bool = True,
    progress: FillProgress | None = None,
    restoring: bool = False,
) -> list[str]:
    """Fill ``spool``'s queue ahead of recovery (the caller holds the queue's lock); the names downloaded.
    ``sync``: fsync each queued file (not needed where the queue is bound to this boot, `_spool.set_source`).
    ``restoring``: the WAL worker started it ahead of its server, which it has not seen yet: while the data
    directory looks still restored (`_restoring`), only the first segments, staged once it is ready.

    A pipeline: up to ``archiver.parallel`` downloads are in flight at any time, and a new one starts as soon as
    recovery takes a segment or a download ends. (Waiting for a whole batch let the queue run dry: recovery takes
    one segment at a time, so each batch was one segment, downloaded while recovery waited.)"""
    staging = staging_dir(spool)
    if staging is not None and _foreign(staging, spool):
        log.info("%s holds WAL segments pgrecovery did not stage: none staged there", staging)
        staging = None
    queue = _Queue(archiver, spool, after, staging)
    absences = Absences(archiver, spool, _walnames.timeline_of(after))
    flight = _Flight(archiver, _spool.prefetch_dir(spool), sync, absences)
    pool = ThreadPoolExecutor(archiver.parallel, thread_name_prefix="wal-prefetch", initializer=_yield_to_replay)
    progress = progress or FillProgress()
    pending = restoring and staging is None and _restoring(spool)
    try:
        with contextlib.closing(queue), pool:
            _fill(archiver, queue, flight, pool, progress, linger, stop, pending)
    finally:
        progress.running = frozenset()
        progress.started.set()
    return flight.downloaded


def _fill(
    archiver: WalArchiver,
    queue: _Queue,
    flight: _Flight,
    pool: ThreadPoolExecutor,
    progress: FillProgress,
    linger: float,
    stop: Callable[[], bool] | None,
    pending: bool = False,
) -> None:
    """The filler's loop (see `fill`); ``pending``: staging may become possible (`_restoring`)."""
    moved = time.monotonic()
    while True:
        if pending:
            pending = _adopt_staging(queue)
        if flight.harvest(queue):
            moved = time.monotonic()
        progress.running = frozenset(flight.running)  # (after staging: a name leaves it staged, or failed)
        todo, taken = queue.look()
        if taken:
            moved = time.monotonic()
            continue
        todo = [n for n in todo if n not in flight.running]
        if pending:  # the restore still runs, on every core: only the first segments now, the others after it
            todo = todo[: max(0, _WHILE_RESTORING - (archiver.prefetch - len(todo)))]
        if not flight.ended and todo and len(flight.running) < archiver.parallel:
            flight.start(pool, todo, queue.stage)
            progress.running = frozenset(flight.running)
            progress.started.set()
            continue
        progress.started.set()  # (nothing to start: the window is queued, or the archive ends)
        stopped = stop is not None and stop()
        idle = not todo and (time.monotonic() - moved > linger or stopped) and not pending
        # staged segments not read yet: the server reads them without calling restore_command; the filler
        # stays to see it (to move on, and for the recovery's report) while recovery goes on
        reading = queue.staged and queue.recovering() and time.monotonic() - moved <= STAGED_LINGER
        if not flight.running and (flight.ended or idle) and (stopped or not reading):
            if flight.absences.end is not None:  # the asks past the end come next: a fresh listing answers them
                flight.refresh()
                if not flight.ended:
                    continue  # the archive grew meanwhile
            return  # ended: the archive's end, or a failed download
        if flight.absences.due():
            flight.refresh()
            continue
        time.sleep(_POLL)


def _restoring(spool: str) -> bool:
    """Whether ``spool``'s data directory looks like one still being restored: the default spool, staging not
    turned off, no server started there and no ``recovery.signal`` or ``standby.signal`` yet (a worker started
    during the restore, `pgrecovery.recovery.run.EarlyWorker`)."""
    data = _stageable(spool)
    if data is None or postmaster_pid(data) is not None:
        return False
    return not any(os.path.exists(os.path.join(data, f)) for f in ("recovery.signal", "standby.signal"))


def _adopt_staging(queue: _Queue) -> bool:
    """Start staging once the restored data directory is ready for recovery (`staging_dir`); whether to keep
    looking: not after `AWAIT_START`, nor once a server started without it."""
    if time.monotonic() - queue.born >= AWAIT_START:
        return False
    found = staging_dir(queue.spool)
    if found is None:
        return postmaster_pid(os.path.dirname(queue.spool)) is None
    if _foreign(found, queue.spool):
        log.info("%s holds WAL segments pgrecovery did not stage: none staged there", found)
    else:
        queue.adopt(found)
    return False


def _yield_to_replay() -> None:
    """Lower this download thread's CPU priority (Linux: the nice value of this thread alone). Replay is one
    process on one core; downloads that decompress and hash beside it on a small machine took its core's time
    whenever more of them ran than there were cores left (they are ahead of replay then, so lose nothing by
    waiting), and when replay waits for them they have the cores to themselves anyway."""
    with contextlib.suppress(OSError, AttributeError):  # AttributeError: no setpriority (not Unix)
        me = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, me, min(19, os.getpriority(os.PRIO_PROCESS, me) + _NICER))


class _Flight:
    """The downloads under way, and what the filler learnt from the ones that ended."""

    def __init__(self, archiver: WalArchiver, directory: str, sync: bool, absences: Absences) -> None:
        self.archiver, self.directory, self.sync, self.absences = archiver, directory, sync, absences
        self.running: dict[str, Future[None]] = {}
        self.downloaded: list[str] = []
        self.index: dict[str, list[WalObject]] = {}
        self.ended = False  # no new downloads: the archive has nothing newer (yet), or one failed

    def start(self, pool: ThreadPoolExecutor, todo: list[str], stage_in: str | None) -> None:
        """Start downloading the first of ``todo`` (names in window order) the archive holds, as many as fit;
        each segment staged in ``stage_in`` (a pg_wal) as its download ends, if given."""
        if any(n not in self.index for n in todo):  # read the listing again only when it may have grown
            self.index = self.absences.index(_walnames.timeline_of(todo[0]))
        room = self.archiver.parallel - len(self.running)
        for name in todo[:room]:
            if name not in self.index:
                self.ended = True  # not archived (yet): restore_command fetches it itself, and starts a filler
                self.absences.reached_end(name)
                break
            obj = self.index[name][0]
            dest = os.path.join(self.directory, name)
            staging = None if stage_in is None or not _walnames.is_segment(name) else stage_in
            then = None if staging is None else functools.partial(stage, wal_dir=staging, name=name)
            self.running[name] = pool.submit(
                self.archiver._download, obj, dest, sync_dir=False, sync_file=self.sync, before_publish=then
            )

    def refresh(self) -> None:
        """List again what the published absences rest on (`Absences`); downloads resume if the archive has grown
        past the end the filler reached."""
        at_end = self.absences.end is not None
        try:
            index = self.absences.refresh()
        except Exception as e:  # noqa: BLE001 - an outage: vouch for nothing until a listing works again
            log.debug("listing the archive again: %s", e)
            self.absences.withdraw()
            return
        if index is not None:
            self.index = index
            if at_end and self.absences.end is None:  # the segment after the end is archived now
                self.ended = False

    def harvest(self, queue: _Queue) -> bool:
        """Collect the downloads that ended; whether any succeeded."""
        got = False
        for name, future in list(self.running.items()):
            if future.done():
                del self.running[name]
                if succeeded(future, name):
                    self.downloaded.append(name)
                    queued = os.path.join(self.directory, name)
                    if queue.stage is not None and _spool.same_file(queued, os.path.join(queue.stage, name)):
                        queue.staged.add(name)  # (staged by the download, `start`)
                    queue.seen.add(name)
                    got = True
                else:
                    self.ended = True
        return got


def _stageable(spool: str) -> str | None:
    """The data directory whose ``pg_wal`` ``spool``'s segments may ever be staged in: with staging not turned off,
    the data directory of a default spool (a spool given by path: where pg_wal is, is not known)."""
    if os.environ.get(STAGING_ENV, "on").strip().lower() in ("0", "off", "no", "false"):
        return None
    return os.path.dirname(spool) if os.path.basename(spool) == _spool.SPOOL_NAME else None


def staging_dir(spool: str) -> str | None:
    """The ``pg_wal`` that verified segments may be staged in for recovery from ``spool`` (see the module), if any:
    the default spool of a data directory of PostgreSQL 15 or later in archive recovery, not in standby mode."""
    data = _stageable(spool)
    if data is None:
        return None
    try:
        with open(os.path.join(data, "PG_VERSION")) as f:
            major = int(f.read(16).strip().split(".")[0])
    except (OSError, ValueError):
        return None
    if major < 15 or os.path.exists(os.path.join(data, "standby.signal")):
        return None
    if not os.path.exists(os.path.join(data, "recovery.signal")):
        return None
    wal = os.path.join(data, "pg_wal")
    return wal if os.path.isdir(os.path.join(wal, "archive_status")) else None


def stage(queued: str, wal_dir: str, name: str | None = None) -> bool:
    """Hard-link the verified segment ``queued`` into ``wal_dir`` under its name (``name``, where ``queued`` is
    the download's temporary file: linked before the file gets its name in the queue, so that the shell never
    finds a queued segment that is not staged yet), with its ``.done`` status; whether it was. Never over a file
    already there, nor across filesystems (then restore_command renames the queued file into place as ever)."""
    name = name or os.path.basename(queued)
    target, done = os.path.join(wal_dir, name), os.path.join(wal_dir, "archive_status", name + ".done")
    if os.path.lexists(target):
        return False
    had_status = os.path.lexists(done)
    try:
        with open(done, "ab"):
            pass  # first: a staged segment never lacks it (PostgreSQL would otherwise archive it again)
        os.link(queued, target)
    except OSError as e:
        log.debug("%s not staged in %s: %s", name, wal_dir, e)
        if not had_status:
            with contextlib.suppress(OSError):
                os.unlink(done)
        return False
    with contextlib.suppress(OSError), open(os.path.join(os.path.dirname(queued), ".staged"), "a") as f:
        f.write(name + "\n")  # what a later filler counts as its own (`_foreign`)
    return True


def _foreign(wal_dir: str, spool: str) -> bool:
    """Whether ``wal_dir`` holds a segment that is neither staged by this spool (listed in the queue's
    ``.staged``) nor put there by the server since it started (PostgreSQL keeps each segment restore_command
    gives it under its own name): one left by the server whose data directory this was, perhaps of another
    history. Nothing is staged beside such a file: PostgreSQL asks restore_command first for every segment, so
    it would read the file only where the archive lacks that segment, but a recovery that meets one is not the
    plain one staging is for, and is left to restore_command alone."""
    try:
        with open(os.path.join(_spool.prefetch_dir(spool), ".staged")) as f:
            ours = set(f.read().split())
    except FileNotFoundError:
        ours = set()
    try:
        others = [n for n in os.listdir(wal_dir) if _walnames.is_segment(n) and n not in ours]
        try:
            started = os.stat(os.path.join(os.path.dirname(wal_dir), "postmaster.pid")).st_mtime
        except FileNotFoundError:
            return bool(others)  # the server has not started yet (a worker started ahead of it): all are older
        return any(os.stat(os.path.join(wal_dir, n)).st_ctime < started for n in others)
    except OSError:
        return True


def succeeded(future: Future[Any], name: str) -> bool:
    """Whether ``future`` (the download or push of ``name``) succeeded; a failure is logged, not raised."""
    try:
        future.result()
        return True
    except Exception as e:  # noqa: BLE001 - one failed file ahead must not fail the others
        log.warning("%s: %s", name, e)
        return False


__all__ = ["LINGER", "STAGING_ENV", "FillProgress", "fill", "succeeded"]
