"""Hashing and compressing the segment PostgreSQL is still writing, so that its push has little left to do.

PostgreSQL writes a segment over seconds or minutes, then marks it ``.ready`` and calls archive_command, which
waits for the whole push: read 16 MB, hash, compress, write. The WAL worker does most of that while the segment
fills. Its pages are written in order, and a WAL page is never changed once the next one has been started, so
each pass hashes and compresses the pages followed by a started page (one whose header carries its own address in
this segment: a recycled file still holds an older address there) and keeps them.

Nothing here is trusted: when the segment is pushed, it is read whole again as ever, and what was hashed and
compressed ahead is used only if it is byte for byte the beginning of what was read (`Filling.finish`); the rest
is added then. Any difference (a page rewritten after a crash of the server, a file replaced) and the push hashes
and compresses the file from scratch, exactly as without this module.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import threading
from collections.abc import Callable
from typing import Any, Final

from .. import _walnames

log = logging.getLogger("pgrecovery.wal")
_LONG_HEADER: Final = 40  # XLogLongPageHeaderData: the short header, system id, segment size, page size
_XLP_LONG_HEADER: Final = 0x0002
_STEP: Final = 256 << 10  # hash and compress at least this much at a time (what is left for the push)
_READ: Final = 256 << 10  # read on from the last page begun this much at a time
_MAX_SEGMENT: Final = 64 << 20  # larger segments are left to the push (as read_and_pack streams them)
_PASS: Final = 0.02  # seconds between passes while the segment is being written
_PASS_QUIET: Final = 0.5  # at most this long between passes when nothing was written (a pass lists a directory)


def _page_address(buf: bytes | bytearray | memoryview, offset: int) -> int:
    return int(struct.unpack_from("=Q", buf, offset + 8)[0])


def _geometry(head: bytes, name: str) -> tuple[int, int] | None:
    """(segment size, page size) from the first page of ``name``, if it is that segment's own first page."""
    if len(head) < _LONG_HEADER:
        return None
    info = struct.unpack_from("=H", head, 2)[0]
    seg_size, page_size = struct.unpack_from("=II", head, 32)
    if not info & _XLP_LONG_HEADER or page_size < 1024 or seg_size % page_size or not 0 < seg_size <= _MAX_SEGMENT:
        return None
    try:
        segno = _walnames.segment_number(name, seg_size)
    except ValueError:
        return None
    return (seg_size, page_size) if _page_address(head, 0) == segno * seg_size else None


class Filling:
    """The segment being written: what of it was hashed and compressed so far."""

    def __init__(self, path: str, ino: int, seg_size: int, page_size: int, packer: Callable[[], Any]) -> None:
        self.path, self.name, self.ino = path, os.path.basename(path), ino
        self.seg_size, self.page_size = seg_size, page_size
        self.start = _walnames.segment_number(self.name, seg_size) * seg_size
        self.buf = bytearray(seg_size)
        self.done = 0  # bytes hashed and compressed
        self.tip = 0  # where the last page known to have begun starts (page 0: checked by _geometry)
        self.mtime: int | None = None
        self.hash = hashlib.sha256()
        self.comp = packer()
        self.parts: list[bytes] = []
        self.lock = threading.Lock()  # a pass and the push's finish never overlap
        self.finished = False

    def advance(self) -> bool:
        """Hash and compress the pages now followed by a started page (read once, from where the last pass
        stopped; at least `_STEP` at a time); whether anything was written since the last pass."""
        with self.lock:
            return not self.finished and self._advance()

    def _advance(self) -> bool:
        with open(self.path, "rb", buffering=0) as f:
            st = os.fstat(f.fileno())
            if st.st_ino != self.ino:
                raise FileNotFoundError(self.path)
            if st.st_mtime_ns == self.mtime:
                return False  # nothing written since the last pass: a quiet server costs a stat
            self.mtime = st.st_mtime_ns
            self.tip = self._scan(f.fileno())
        # pages before the tip are complete (the next one has begun); the page at the tip may still grow
        if self.tip - self.done >= _STEP:
            with memoryview(self.buf) as view, view[self.done : self.tip] as chunk:
                self.hash.update(chunk)
                self.parts.append(bytes(self.comp.compress(chunk)))  # (no compression: a view of the buffer)
            self.done = self.tip
        return True

    def _scan(self, fd: int) -> int:
        """Read on from the tip (the last page known begun, which may have grown), `_READ` at a time, up to the
        first page not begun (the old content of a recycled file): the new tip."""
        page, tip = self.page_size, self.tip
        with memoryview(self.buf) as view:
            while tip + page < self.seg_size:
                got = os.preadv(fd, [view[tip : tip + _READ]], tip)
                end = tip + got - got % page
                while tip + page < end and _page_address(self.buf, tip + page) == self.start + tip + page:
                    tip += page
                if tip + page < end or got < _READ:
                    break  # a page not begun, or the end of what is there
        return tip

    def finish(self, buf: bytearray, size: int) -> tuple[str, bytes] | None:
        """The sha256 and compressed bytes of ``buf[:size]`` (the segment as the push read it), if what was done
        ahead is exactly its beginning; else None (the push does it all)."""
        with self.lock:
            self.finished = True
            done = self.done
            if size != self.seg_size or done == 0:
                return None
            with memoryview(self.buf) as mine:
                if not buf.startswith(mine[:done]):  # a memcmp (comparing memoryviews goes byte by byte)
                    return None
            with memoryview(buf) as view:
                rest = view[done:size]
                self.hash.update(rest)
                packed = b"".join([*self.parts, self.comp.compress(rest), self.comp.flush()])
                rest.release()
            return self.hash.hexdigest(), packed


class SegmentFiller:
    """Follows the segment PostgreSQL writes in ``wal_dir`` (a thread, one pass every `_PASS` s) and hands the
    work done to the push of that segment (`take`)."""

    def __init__(self, wal_dir: str, segment_size: int, packer: Callable[[], Any]) -> None:
        self.wal_dir, self.segment_size, self.packer = wal_dir, segment_size, packer
        self._status = os.path.join(wal_dir, "archive_status")
        self._lock = threading.Lock()
        self._current: Filling | None = None
        self._previous: Filling | None = None  # the one before: ready now, its push may not have taken it yet
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wal-filling", daemon=True)

    def start(self) -> SegmentFiller:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def take(self, name: str) -> Filling | None:
        """The work done ahead on ``name`` (given once: the push that takes it finishes it)."""
        with self._lock:
            for which in ("_current", "_previous"):
                filling: Filling | None = getattr(self, which)
                if filling is not None and filling.name == name:
                    setattr(self, which, None)
                    return filling
        return None

    def _run(self) -> None:
        pause = _PASS
        while not self._stop.wait(pause):
            try:
                written = self._pass()
            except Exception as e:  # noqa: BLE001 - only speed is at stake: the push reads the file whole anyway
                log.debug("following the segment being written: %s", e)
                written = False
                with self._lock:
                    self._current = self._previous = None
            pause = _PASS if written else min(_PASS_QUIET, pause * 2)

    def _pass(self) -> bool:
        """One pass; whether the segment being written had grown."""
        found = self._writing()
        with self._lock:
            current = self._current
            if found is None:
                return False
            path, ino, seg_size, page_size = found
            if current is None or current.path != path or current.ino != ino:
                self._previous = current
                current = self._current = Filling(path, ino, seg_size, page_size, self.packer)
        return current.advance()  # outside the filler's lock: the Filling has its own, which finish() takes too

    def _writing(self) -> tuple[str, int, int, int] | None:
        """The segment being written: the one after the newest in ``archive_status`` (ready or done), once its first
        page is its own (a recycled file, renamed ahead under that name, still carries the address it had)."""
        newest = max(
            (n.partition(".")[0] for n in os.listdir(self._status) if n.endswith((".ready", ".done"))),
            key=lambda n: n if _walnames.is_segment(n) else "",
            default="",
        )
        if not _walnames.is_segment(newest):
            return None
        name = _walnames.next_segment(newest, self.segment_size)
        path = os.path.join(self.wal_dir, name)
        try:
            with open(path, "rb", buffering=0) as f:
                head = f.read(_LONG_HEADER)
                ino = os.fstat(f.fileno()).st_ino
        except OSError:
            return None
        geometry = _geometry(head, name)
        return None if geometry is None or geometry[0] != self.segment_size else (path, ino, *geometry)


__all__ = ["Filling", "SegmentFiller"]
