"""Where a named restore point lies, before anything is written: the points pgrecovery recorded, else those found in
the archived WAL along the target timeline's history; and which base backup reaches it.

PostgreSQL stops at the first record of that name it replays after the backup's start, and refuses to stop before
the backup is consistent (its stop LSN). So a backup b reaches the name when the first occurrence at or after
b's start LSN is at or after its stop LSN; the newest such backup is chosen, and that occurrence is the target.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import attrs

from .._walnames import HistoryEntry, is_segment, parse_lsn, segment_name, segment_number
from ..errors import StorageError, TargetUnreachable
from ..manifest import BackupManifest, PhysicalInfo
from ..repository import Repository
from ..wal.index import WalIndex
from ..wal.restore_points import RestorePoint, recorded, scan_segments

log = logging.getLogger(__package__)


def on_history(point: RestorePoint, timeline: int, history: list[HistoryEntry]) -> bool:
    """Whether ``point`` lies on ``timeline``'s history (on it, or on an ancestor before that one branched off)."""
    if point.timeline == timeline:
        return True
    return any(e.parent_timeline == point.timeline and point.position <= parse_lsn(e.switch_lsn) for e in history)


class PointSearch:
    """The occurrences of restore point ``name`` along ``timeline``'s history, learnt as far back as asked.

    Recorded points answer at once (``source`` ``recorded``); else archived segments are read newest first, from
    the newest archived one down to ``first_segment``, only as far as `down_to` needs."""

    def __init__(
        self,
        repo: Repository,
        name: str,
        *,
        timeline: int,
        history: list[HistoryEntry],
        first_segment: str,
        segment_size: int,
        system_identifier: str | None = None,
    ) -> None:
        self.name = name
        self.repo = repo
        self.timeline, self.history = timeline, history
        self.found = [
            p
            for p in recorded(repo, name)
            if on_history(p, timeline, history)
            and (system_identifier is None or p.system_identifier in (None, system_identifier))
        ]
        self.low: int | None = 0 if self.found else None  # how far back the occurrences are known
        self._scan: Iterator[tuple[str, list[RestorePoint]]] | None = None
        self.segment_size = segment_size
        if not self.found:
            index = WalIndex(repo, segment_size=segment_size)
            try:
                segments = _along_history(index, timeline, first_segment)
            except StorageError as e:
                raise TargetUnreachable(
                    f"cannot tell where restore point {name!r} is: {e}", target=f"name {name}"
                ) from None
            self._scan = scan_segments(index, segments, name)
            self._first = segment_number(first_segment, segment_size) * segment_size
            log.info("looking for restore point %r in %d archived segment(s)", name, len(segments))

    def down_to(self, lsn: int) -> None:
        """Learn every occurrence at or after ``lsn`` (as far as the archive goes back)."""
        while self._scan is not None and (self.low is None or self.low > lsn):
            try:
                segment, points = next(self._scan)
            except StopIteration:
                self._scan, self.low = None, self._first  # the archive scanned down to the first segment
                return
            except StorageError as e:
                raise TargetUnreachable(
                    f"cannot tell where restore point {self.name!r} is: {e}; choose a backup with backup_id "
                    "(--backup ID) or another target",
                    target=f"name {self.name}",
                ) from None
            self.found.extend(attrs.evolve(p, timeline=self._timeline_at(p.position)) for p in points)
            self.low = segment_number(segment, self.segment_size) * self.segment_size

    def _timeline_at(self, lsn: int) -> int:
        """The timeline of the history that holds ``lsn`` (a page's header may still name the parent's)."""
        return next((e.parent_timeline for e in self.history if lsn <= parse_lsn(e.switch_lsn)), self.timeline)

    def first_after(self, lsn: int) -> RestorePoint | None:
        """The first occurrence at or after ``lsn`` (what recovery from there stops at)."""
        self.down_to(lsn)
        after = [p for p in self.found if p.position > lsn]
        return min(after, key=lambda p: p.position) if after else None

    def newest(self) -> RestorePoint | None:
        self.down_to(0)
        return max(self.found, key=lambda p: p.position) if self.found else None


def _along_history(index: WalIndex, timeline: int, first_segment: str) -> list[str]:
    """The segment names from ``first_segment`` to the newest archived one along ``timeline``'s history."""
    size = index.segment_size
    lineage = index.lineage(timeline)
    start, end = segment_number(first_segment, size), segment_number(first_segment, size)
    for i, (tli, begin) in enumerate(lineage):
        until = lineage[i + 1][1] if i + 1 < len(lineage) else None
        for n in index.index(tli):
            if is_segment(n) and begin <= (no := segment_number(n, size)) and (until is None or no < until):
                end = max(end, no)

    def owner(segno: int) -> int:
        return max((tli for tli, begin in lineage if begin <= segno), default=lineage[0][0])

    return [segment_name(owner(no), no, size) for no in range(start, end + 1)]


def _window(m: BackupManifest) -> tuple[int, int]:
    phys: PhysicalInfo | None = m.physical
    assert phys is not None
    return parse_lsn(phys.start_lsn), parse_lsn(phys.stop_lsn)


def _unknown(name: str) -> TargetUnreachable:
    return TargetUnreachable(
        f"no restore point named {name!r} in the archive or the repository's records: "
        "create it with pgrecovery restore-point, or choose another target",
        target=f"name {name}",
    )


def choose_backup(search: PointSearch, backups: list[BackupManifest]) -> tuple[BackupManifest, RestorePoint]:
    """The newest of ``backups`` (oldest first) from which recovery reaches the name, and the occurrence it stops
    at; `TargetUnreachable` when none does."""
    for m in reversed(backups):
        start, stop = _window(m)
        first = search.first_after(start)
        if first is not None and first.position >= stop:
            return m, first
    newest = search.newest()
    if newest is None:
        raise _unknown(search.name)
    oldest = backups[0]
    assert oldest.physical is not None
    raise TargetUnreachable(
        f"restore point {search.name!r} (LSN {newest.lsn}) is before the end of the oldest base backup {oldest.id} "
        f"(stop LSN {oldest.physical.stop_lsn}) or inside a backup: nothing in {search.repo.display_url} can "
        "recover to it",
        backup_id=oldest.id,
        target=f"name {search.name}",
    )


def check_backup(search: PointSearch, m: BackupManifest) -> RestorePoint:
    """The occurrence recovery from backup ``m`` stops at; `TargetUnreachable` when it cannot reach the name."""
    start, stop = _window(m)
    assert m.physical is not None
    first = search.first_after(start)
    if first is not None and first.position >= stop:
        return first
    point = first or search.newest()
    if point is None:
        raise _unknown(search.name)
    raise TargetUnreachable(
        f"restore point {search.name!r} (LSN {point.lsn}) is before the end of backup {m.id} "
        f"(stop LSN {m.physical.stop_lsn}): choose an older backup, or none (the newest that precedes it is chosen)",
        backup_id=m.id,
        target=f"name {search.name}",
    )


__all__ = ["PointSearch", "check_backup", "choose_backup", "on_history"]
