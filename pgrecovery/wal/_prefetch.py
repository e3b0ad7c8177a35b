"""Keeping the prefetch queue filled ahead of recovery (the body of `WalArchiver.run_prefetch`).

restore_command takes a queued segment without telling anyone: the fast form of the command (`commands`) moves
it into place from the shell, with no Python at all. So the filler watches the queue itself: a queued segment
that disappears was taken by recovery, and the window moves past it. It keeps ``archiver.prefetch`` segments
ahead of the newest one taken (or asked for, ``.wanted``), downloads up to ``archiver.parallel`` at once, and
stops when the archive has nothing newer, a download fails, or recovery takes nothing for ``linger`` seconds
(restore_command starts a filler again when it has to fetch a segment itself).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Final

from .. import _spool, _walnames

if TYPE_CHECKING:
    from ._layout import WalObject
    from .archiver import WalArchiver

log = logging.getLogger(__package__)
LINGER: Final = 2.0
_POLL: Final = 0.01


def _position(name: str, segment_size: int) -> tuple[int, int]:
    return _walnames.segment_number(name, segment_size), _walnames.timeline_of(name)


class _Queue:
    """What the filler knows of the queue: the newest segment recovery has reached, and the names it has seen."""

    def __init__(self, archiver: WalArchiver, spool: str, after: str) -> None:
        self.archiver, self.spool, self.reached = archiver, spool, after
        self.size = archiver.segment_size
        self.seen: set[str] = set()
        self._swept: str | None = None  # where recovery was at the last sweep (none yet: the first one also
        # removes what interrupted downloads of an earlier filler left; later ones leave temporary files alone,
        # which are this filler's downloads under way)

    def look(self) -> tuple[list[str], bool]:
        """(the names missing from the window ahead of recovery, whether recovery moved since the last look)."""
        asked = _spool.read_wanted(self.spool)
        if asked and _walnames.is_segment(asked) and _position(asked, self.size) > _position(self.reached, self.size):
            self.reached = asked
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
        return [n for n in window if n not in have], False

    def _sweep(self, segno: int) -> None:
        """Drop queued segments recovery is past, and leftovers of interrupted downloads."""

        def ahead(n: str) -> bool:
            return not _walnames.is_segment(n) or _walnames.segment_number(n, self.size) > segno

        _spool.clear_prefetched(self.spool, keep=ahead, temps=self._swept is None)


def fill(
    archiver: WalArchiver,
    after: str,
    spool: str,
    *,
    linger: float = LINGER,
    stop: Callable[[], bool] | None = None,
    sync: bool = True,
) -> list[str]:
    """Fill ``spool``'s queue ahead of recovery (the caller holds the queue's lock); the names downloaded.
    ``sync``: fsync each queued file (not needed where the queue is bound to this boot, `_spool.set_source`).

    A pipeline: up to ``archiver.parallel`` downloads are in flight at any time, and a new one starts as soon as
    recovery takes a segment or a download ends. (Waiting for a whole batch let the queue run dry: recovery takes
    one segment at a time, so each batch was one segment, downloaded while recovery waited.)"""
    queue = _Queue(archiver, spool, after)
    flight = _Flight(archiver, _spool.prefetch_dir(spool), sync)
    moved = time.monotonic()
    with ThreadPoolExecutor(archiver.parallel, thread_name_prefix="wal-prefetch") as pool:
        while True:
            if flight.harvest(queue):
                moved = time.monotonic()
            todo, taken = queue.look()
            if taken:
                moved = time.monotonic()
                continue
            todo = [n for n in todo if n not in flight.running]
            if not flight.ended and todo and len(flight.running) < archiver.parallel:
                flight.start(pool, todo)
                continue
            idle = not todo and (time.monotonic() - moved > linger or (stop is not None and stop()))
            if not flight.running and (flight.ended or idle):  # ended: the archive's end, or a failed download
                break
            time.sleep(_POLL)
    return flight.downloaded


class _Flight:
    """The downloads under way, and what the filler learnt from the ones that ended."""

    def __init__(self, archiver: WalArchiver, directory: str, sync: bool) -> None:
        self.archiver, self.directory, self.sync = archiver, directory, sync
        self.running: dict[str, Future[None]] = {}
        self.downloaded: list[str] = []
        self.index: dict[str, list[WalObject]] = {}
        self.ended = False  # no new downloads: the archive has nothing newer (yet), or one failed

    def start(self, pool: ThreadPoolExecutor, todo: list[str]) -> None:
        """Start downloading the first of ``todo`` (names in window order) the archive holds, as many as fit."""
        if any(n not in self.index for n in todo):  # read the listing again only when it may have grown
            self.index = self.archiver.index(_walnames.timeline_of(todo[0]))
        room = self.archiver.parallel - len(self.running)
        for name in todo[:room]:
            if name not in self.index:
                self.ended = True  # not archived (yet): restore_command fetches it itself, and starts a filler
                break
            obj = self.index[name][0]
            dest = os.path.join(self.directory, name)
            self.running[name] = pool.submit(self.archiver._download, obj, dest, sync_dir=False, sync_file=self.sync)

    def harvest(self, queue: _Queue) -> bool:
        """Collect the downloads that ended; whether any succeeded."""
        got = False
        for name, future in list(self.running.items()):
            if future.done():
                del self.running[name]
                if succeeded(future, name):
                    self.downloaded.append(name)
                    queue.seen.add(name)
                    got = True
                else:
                    self.ended = True
        return got


def succeeded(future: Future[Any], name: str) -> bool:
    """Whether ``future`` (the download or push of ``name``) succeeded; a failure is logged, not raised."""
    try:
        future.result()
        return True
    except Exception as e:  # noqa: BLE001 - one failed file ahead must not fail the others
        log.warning("%s: %s", name, e)
        return False


__all__ = ["LINGER", "fill", "succeeded"]
