"""`WalIndex`: what the WAL archive holds, read from its listing: timelines, the objects of each WAL file, history
files, and the continuity of segments along a timeline's history (what is missing, what is corrupt).

The info layer of the WAL area: recovery planning, retention and verification ask it without the archiver
(`WalArchiver` is a `WalIndex` that also pushes and fetches).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from .. import _walnames
from .._walnames import DEFAULT_SEGMENT_SIZE, HistoryEntry
from ..errors import ChecksumMismatch, ConfigurationError, StorageError
from ._layout import WAL_PREFIX, WalObject, check_object, parse_object_name, read_verified, timeline_dir

if TYPE_CHECKING:
    from ..storage import Storage


@attrs.frozen(kw_only=True)
class WalVerifyReport:
    """Continuity of the archive from ``first`` to ``last`` along ``timeline``'s history."""

    first: str
    last: str
    timeline: int
    timelines: tuple[int, ...]
    count: int
    missing: tuple[str, ...]
    corrupt: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.missing and not self.corrupt

    def to_dict(self) -> dict[str, Any]:
        return {
            "first": self.first,
            "last": self.last,
            "timeline": self.timeline,
            "timelines": list(self.timelines),
            "count": self.count,
            "missing": list(self.missing),
            "corrupt": list(self.corrupt),
            "ok": self.ok,
        }


class WalIndex:
    """Questions about one repository's WAL archive; ``segment_size`` is the cluster's WAL segment size."""

    def __init__(self, repo: Storage, *, segment_size: int = DEFAULT_SEGMENT_SIZE) -> None:
        self.repo = repo
        try:
            self.segment_size = _walnames.check_segment_size(segment_size)
        except ValueError as e:
            raise ConfigurationError(str(e)) from None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.repo!r})"

    def timelines(self) -> list[int]:
        """Timelines that have a directory in the archive, ascending."""
        found = []
        for entry in self.repo.children(WAL_PREFIX):
            if len(entry) == 8 and all(c in "0123456789ABCDEF" for c in entry):
                found.append(int(entry, 16))
        return sorted(found)

    def index(self, timeline: int) -> dict[str, list[WalObject]]:
        """Every archived file of ``timeline`` by WAL file name (normally one object each)."""
        prefix = timeline_dir(timeline)
        result: dict[str, list[WalObject]] = {}
        for entry in self.repo.children(prefix):
            parsed = parse_object_name(entry)
            if parsed is None:
                continue
            name, digest, codec = parsed
            result.setdefault(name, []).append(
                WalObject(name=name, key=f"{prefix}/{entry}", sha256=digest, codec=codec)
            )
        return result

    def objects(self, name: str) -> list[WalObject]:
        """The stored objects for WAL file ``name`` (empty when it is not archived)."""
        return self.index(_walnames.timeline_of(name)).get(name, [])

    def find(self, name: str) -> WalObject | None:
        """The stored object for ``name``, None when it is not archived."""
        return single(name, self.objects(name))

    def list_archived(self, timeline: int | None = None) -> dict[int, list[str]]:
        """Archived WAL file names (segments, history, .backup and .partial files) by timeline, sorted."""
        tlis = [timeline] if timeline is not None else self.timelines()
        listing = {t: sorted(self.index(t)) for t in tlis}
        return {t: names for t, names in listing.items() if names or timeline is not None}

    def read(self, name: str) -> bytes:
        """The verified raw content of an archived file (for small files: history, .backup)."""
        obj = self.find(name)
        if obj is None:
            raise StorageError(f"{name} is not in the WAL archive of {self.repo.display_url}")
        return read_verified(self.repo, obj)

    def history(self, timeline: int) -> list[HistoryEntry]:
        """The entries of ``timeline``'s history file, oldest first (empty for timeline 1)."""
        if timeline == 1:
            return []
        name = _walnames.history_name(timeline)
        try:
            text = self.read(name).decode()
        except UnicodeDecodeError:
            raise StorageError(f"{name} in the archive is not a text file") from None
        try:
            return _walnames.parse_history(text)
        except ValueError as e:
            raise StorageError(f"{name} in the archive cannot be parsed: {e}") from None

    def latest_timeline(self, descending_from: int = 1) -> int:
        """The newest archived timeline whose history descends from ``descending_from`` (itself if none)."""
        for tli in reversed(self.timelines()):
            if tli == descending_from:
                return tli
            if (
                tli > descending_from
                and self.objects(_walnames.history_name(tli))
                and descending_from in {e.parent_timeline for e in self.history(tli)}
            ):
                return tli
        return descending_from

    def lineage(self, timeline: int) -> list[tuple[int, int]]:
        """(timeline, first segment number it owns) along ``timeline``'s history, oldest first.

        After a switch at LSN L, the segment that holds L and every later one are read from the new timeline.
        """
        entries = self.history(timeline)
        tlis = [e.parent_timeline for e in entries] + [timeline]
        begins = [0] + [_walnames.parse_lsn(e.switch_lsn) // self.segment_size for e in entries]
        return list(zip(tlis, begins, strict=True))

    @staticmethod
    def _owner(lineage: list[tuple[int, int]], segno: int) -> int:
        owner = lineage[0][0]
        for tli, begin in lineage:
            if begin <= segno:
                owner = tli
        return owner

    def _expected(
        self, first_segment: str, last_segment: str | None, timeline: int | None
    ) -> tuple[int, list[tuple[int, int]], int, int, dict[int, set[str]]]:
        try:
            first_tli = _walnames.timeline_of(first_segment)
            start = _walnames.segment_number(first_segment, self.segment_size)
            end = _walnames.segment_number(last_segment, self.segment_size) if last_segment else None
        except ValueError as e:
            raise ConfigurationError(str(e)) from None
        if not _walnames.is_segment(first_segment) or (last_segment and not _walnames.is_segment(last_segment)):
            raise ConfigurationError("give segment names (24 hex digits) as the first and last segments")
        if timeline is None:
            timeline = _walnames.timeline_of(last_segment) if last_segment else self.latest_timeline(first_tli)
        lineage = self.lineage(timeline)
        if first_tli not in {t for t, _ in lineage}:
            raise ConfigurationError(
                f"timeline {first_tli} (of {first_segment}) is not in the history of timeline {timeline}"
            )
        archived = {t: set(self.index(t)) for t, _ in lineage}
        if end is None:
            end = start
            for i, (tli, begin) in enumerate(lineage):
                until = lineage[i + 1][1] if i + 1 < len(lineage) else None
                for n in archived[tli]:
                    if _walnames.is_segment(n):
                        segno = _walnames.segment_number(n, self.segment_size)
                        if segno >= begin and (until is None or segno < until):
                            end = max(end, segno)
        return timeline, lineage, start, end, archived

    def missing(self, first_segment: str, last_segment: str | None = None, *, timeline: int | None = None) -> list[str]:
        """Segments absent from the archive between two segments (inclusive), following timeline switches.

        ``timeline`` defaults to ``last_segment``'s, or else the newest archived timeline descending from
        ``first_segment``'s; ``last_segment`` defaults to the newest archived segment along that history.
        """
        _, lineage, start, end, archived = self._expected(first_segment, last_segment, timeline)
        result = []
        for segno in range(start, end + 1):
            tli = self._owner(lineage, segno)
            name = _walnames.segment_name(tli, segno, self.segment_size)
            if name not in archived[tli]:
                result.append(name)
        return result

    def verify(
        self, first_segment: str | None = None, timeline: int | None = None, *, check_digests: bool = False
    ) -> WalVerifyReport:
        """Check that every segment from ``first_segment`` to the newest archived one is present.

        ``first_segment`` defaults to the oldest archived segment. With ``check_digests`` every archived object
        is also downloaded and checked against its sha256 (reported in ``corrupt``): the segments checked for
        continuity, and every other file of every timeline (history files, ``.backup`` and ``.partial`` files,
        segments of timelines not followed), which recovery may need later. The history file of every archived
        timeline after the first is expected too (reported in ``missing``).
        """
        if first_segment is None:
            first_segment = self._oldest_segment(timeline)
        tli, lineage, start, end, archived = self._expected(first_segment, None, timeline)
        missing, corrupt, followed, count = [], [], set(), 0
        checked: set[str] = set()  # the segments along the followed path (their digests checked here, if asked)
        index_cache: dict[int, dict[str, list[WalObject]]] = {}
        for segno in range(start, end + 1):
            owner = self._owner(lineage, segno)
            followed.add(owner)
            name = _walnames.segment_name(owner, segno, self.segment_size)
            checked.add(name)
            if name not in archived[owner]:
                missing.append(name)
                continue
            count += 1
            if check_digests and not self._intact(index_cache.setdefault(owner, self.index(owner))[name]):
                corrupt.append(name)
        for other in self.timelines():  # a timeline holding WAL without its history file cannot be followed
            index = index_cache.setdefault(other, self.index(other))
            history = _walnames.history_name(other)
            if other > 1 and history not in index:
                missing.append(history)
            if check_digests:
                corrupt += [n for n in sorted(index) if n not in checked and not self._intact(index[n])]
        return WalVerifyReport(
            first=_walnames.segment_name(self._owner(lineage, start), start, self.segment_size),
            last=_walnames.segment_name(self._owner(lineage, end), end, self.segment_size),
            timeline=tli,
            timelines=tuple(sorted(followed)),
            count=count,
            missing=tuple(missing),
            corrupt=tuple(corrupt),
        )

    def _intact(self, objects: list[WalObject]) -> bool:
        """Whether every stored object of one WAL file reads back whole and matches the sha256 in its name."""
        for obj in objects:
            try:
                check_object(self.repo, obj)
            except ChecksumMismatch:
                return False
        return True

    def _oldest_segment(self, timeline: int | None) -> str:
        for tli in self.timelines():
            if timeline is not None and tli > timeline:
                break
            segments = [n for n in self.index(tli) if _walnames.is_segment(n)]
            if segments:
                return min(segments)
        raise ConfigurationError(f"no WAL segments are archived in {self.repo.display_url}")


__all__ = ["WalIndex", "WalVerifyReport"]


def single(name: str, found: list[WalObject]) -> WalObject | None:
    """The one object archived as ``name`` (None: none); two with different content raise `StorageError`."""
    if len({o.sha256 for o in found}) > 1:
        raise StorageError(
            f"{name} is archived more than once with different content ({', '.join(o.key for o in found)}): "
            "remove the wrong one"
        )
    return found[0] if found else None
