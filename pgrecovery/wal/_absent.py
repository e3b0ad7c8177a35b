"""What the archive is known not to hold, published for restore_command's shell (``<spool>/prefetch/.absent``).

A recovery asks restore_command for files the archive does not have, every time: the next timeline's history file
when it starts (is there a newer timeline to follow?), the segment after the archive's end, and two history files
when it promotes (the next timeline's, and its own timeline's to copy from). Each such miss started Python and
asked the WAL worker, which listed the archive again: about 20 ms locally, and a request to the store each time.

The prefetch filler lists the archive anyway. It publishes what its listings lack: the segment after the archive's
end once it reaches it, timeline 1's history file (PostgreSQL never writes one), and the next timeline's history
file while the archive's root has no directory for that timeline. The shell answers "not archived" for a name in
the file with no program started, but only for :data:`VALID` after the listing began (the file holds its expiry
in the kernel's ``/proc/uptime`` clock, which the shell reads with a builtin), only in the boot it was written in,
and only for the repository it names. While the filler runs it lists again every :data:`REFRESH` seconds, and
once more as it stops at the archive's end; so an answer is at most one second older than the archive, the same
as a miss looked up a second earlier. A file archived since (another server archiving, a standby following the
archive) is found by the next listing, and downloads resume.
Anything not in the file, or once it has expired, goes to Python and a fresh listing, as before.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import TYPE_CHECKING, Final

from .. import _spool, _walnames
from .._fsutil import write_atomic

if TYPE_CHECKING:
    from ._layout import WalObject
    from .archiver import WalArchiver

NAME: Final = ".absent"
VALID: Final = 100  # centiseconds an absence is published for, from the start of the listing that found it
REFRESH: Final = 0.4  # seconds between listings while the filler runs (an answer always has one to rely on)
_UPTIME: Final = "/proc/uptime"


def uptime_cs() -> int | None:
    """The kernel's uptime in centiseconds, read as the shell reads it (``12345.67`` gives 1234567), or None."""
    try:
        with open(_UPTIME) as f:
            whole, _, frac = f.read(64).split()[0].partition(".")
        return int(whole + frac)
    except (OSError, ValueError, IndexError):
        return None


def publish(spool: str, tag: str, names: list[str], listed_at: int | None) -> None:
    """Publish ``names`` as not archived in repository ``tag`` according to a listing begun at ``listed_at``
    (`uptime_cs`); withdraw what was published where there is nothing to say or the boot or clock is unknown."""
    path = os.path.join(_spool.prefetch_dir(spool), NAME)
    boot = _spool.boot_id()
    if not names or not boot or listed_at is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    write_atomic(path, f"{tag} {boot} {listed_at + VALID} {' '.join(names)}\n", mode=0o600, sync=False)


class Absences:
    """What a filler knows its timeline lacks (see the module): listed again every `REFRESH` seconds, published."""

    def __init__(self, archiver: WalArchiver, spool: str, timeline: int) -> None:
        self.archiver, self.spool, self.timeline = archiver, spool, timeline
        self.tag = _spool.repo_tag(archiver.repo.url)
        self.end: str | None = None  # the segment after the archive's end, when the filler reached it
        self._at = 0.0  # when the last listing began (monotonic)
        self._listed_at: int | None = None  # the same, in `uptime_cs`
        self._next_absent = False  # the next timeline has no directory in the archive

    def due(self) -> bool:
        return time.monotonic() - self._at >= REFRESH

    def index(self, timeline: int) -> dict[str, list[WalObject]]:
        """``timeline``'s listing, read afresh (the end it had is forgotten if now archived), and published."""
        if timeline != self.timeline:
            self.timeline, self.end = timeline, None
        listed_at = self._begin()
        index = self.archiver.index(timeline)
        if self.end in index:
            self.end = None
        self._publish(listed_at)
        return index

    def reached_end(self, name: str) -> None:
        """``name`` is not in the listing `index` just read: the archive ends before it."""
        self.end = name
        self._publish(self._listed_at, root=False)

    def refresh(self) -> dict[str, list[WalObject]] | None:
        """List again what the published answers rest on: the timeline's listing where the archive's end was
        reached (returned), the archive's timelines only otherwise."""
        if self.end is not None:
            return self.index(self.timeline)
        self._publish(self._begin())
        return None

    def withdraw(self) -> None:
        """Publish nothing (a listing failed: what was published may no longer hold)."""
        with contextlib.suppress(OSError):
            publish(self.spool, self.tag, [], None)

    def _begin(self) -> int | None:
        self._at = time.monotonic()
        self._listed_at = uptime_cs()
        return self._listed_at

    def _publish(self, listed_at: int | None, *, root: bool = True) -> None:
        if root:
            self._next_absent = self.timeline + 1 not in self.archiver.timelines()
        names = [self.end] if self.end is not None else []
        if self.timeline == 1:  # PostgreSQL never writes timeline 1's history file (a promotion asks for it)
            names.append(_walnames.history_name(1))
        if self._next_absent:
            names.append(_walnames.history_name(self.timeline + 1))
        with contextlib.suppress(OSError):
            publish(self.spool, self.tag, names, listed_at)


__all__ = ["NAME", "REFRESH", "VALID", "Absences", "publish", "uptime_cs"]
