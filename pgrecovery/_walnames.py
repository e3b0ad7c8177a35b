"""WAL file names, LSNs and timeline history files (standard library only: archive_command imports this).

A segment name is 24 hex digits: timeline, then the segment number split into a "log" and a "seg" part
(``TTTTTTTTLLLLLLLLSSSSSSSS``); with a segment size of S bytes a log holds ``0x100000000 // S`` segments. Beside
segments the archive holds timeline history files (``00000002.history``), backup history files
(``000000010000000000000002.00000028.backup``) and the last, partial segment of a timeline a standby left at
promotion (``000000010000000000000005.partial``).
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs milliseconds on the fast path
if TYPE_CHECKING:
    from typing import Final

DEFAULT_SEGMENT_SIZE: Final = 16 * 1024 * 1024
_HEX: Final = frozenset("0123456789ABCDEF")


class HistoryEntry(tuple[int, str, str]):
    """One line of a timeline history file: ``parent_timeline`` ended at ``switch_lsn`` for ``reason``.

    A plain tuple subclass (not typing.NamedTuple): this module is imported on archive_command's fast path.
    """

    __slots__ = ()

    def __new__(cls, parent_timeline: int, switch_lsn: str, reason: str) -> HistoryEntry:
        return super().__new__(cls, (parent_timeline, switch_lsn, reason))

    @property
    def parent_timeline(self) -> int:
        return self[0]

    @property
    def switch_lsn(self) -> str:
        return self[1]

    @property
    def reason(self) -> str:
        return self[2]

    def __repr__(self) -> str:
        return f"HistoryEntry(parent_timeline={self[0]}, switch_lsn={self[1]!r}, reason={self[2]!r})"


def _is_hex(text: str, length: int) -> bool:
    return len(text) == length and _HEX.issuperset(text)


def check_segment_size(size: int) -> int:
    """``size`` if it is a valid wal_segment_size (a power of two from 1 MiB to 1 GiB), else ValueError."""
    if size < 1 << 20 or size > 1 << 30 or size & (size - 1):
        raise ValueError(f"invalid WAL segment size {size}: it must be a power of two from 1 MiB to 1 GiB")
    return size


def segments_per_log(segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    return 0x100000000 // check_segment_size(segment_size)


# -- classification --------------------------------------------------------------------------------------------


def is_segment(name: str) -> bool:
    """``TTTTTTTTLLLLLLLLSSSSSSSS`` (24 upper-case hex digits)."""
    return _is_hex(name, 24)


def is_history(name: str) -> bool:
    """``TTTTTTTT.history``."""
    return len(name) == 16 and name.endswith(".history") and _is_hex(name[:8], 8)


def is_backup(name: str) -> bool:
    """``<segment>.<8 hex offset>.backup``."""
    return len(name) == 40 and name.endswith(".backup") and name[24] == "." and _is_hex(name[:24] + name[25:33], 32)


def is_partial(name: str) -> bool:
    """``<segment>.partial``."""
    return len(name) == 32 and name.endswith(".partial") and _is_hex(name[:24], 24)


def is_wal_file(name: str) -> bool:
    """Any name that belongs in a WAL archive: segment, history, backup history or partial segment."""
    return is_segment(name) or is_history(name) or is_backup(name) or is_partial(name)


def timeline_of(name: str) -> int:
    """The timeline a WAL file name belongs to (its first 8 hex digits)."""
    if not is_wal_file(name):
        raise ValueError(f"{name!r} is not a WAL file name")
    return int(name[:8], 16)


# -- segments --------------------------------------------------------------------------------------------------


def parse_segment(name: str) -> tuple[int, int, int]:
    """(timeline, log, seg) of a 24-hex segment name (also accepted: the segment part of .partial/.backup names)."""
    base = name[:24]
    if not (is_segment(name) or is_partial(name) or is_backup(name)):
        raise ValueError(f"{name!r} is not a WAL segment name (24 hex digits)")
    return int(base[:8], 16), int(base[8:16], 16), int(base[16:24], 16)


def format_segment(timeline: int, log: int, seg: int) -> str:
    if not (0 < timeline <= 0xFFFFFFFF and 0 <= log <= 0xFFFFFFFF and 0 <= seg <= 0xFFFFFFFF):
        raise ValueError(f"timeline, log and seg out of range: {timeline}, {log}, {seg}")
    return f"{timeline:08X}{log:08X}{seg:08X}"


def segment_number(name: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    """The absolute segment number of ``name`` (LSN // segment_size of its first byte)."""
    _, log, seg = parse_segment(name)
    per = segments_per_log(segment_size)
    if seg >= per:
        raise ValueError(f"{name!r} is not a valid segment name for {segment_size}-byte segments")
    return log * per + seg


def segment_name(timeline: int, segno: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> str:
    """The name of absolute segment ``segno`` on ``timeline``."""
    if segno < 0:
        raise ValueError(f"negative segment number {segno}")
    per = segments_per_log(segment_size)
    return format_segment(timeline, segno // per, segno % per)


def next_segment(name: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> str:
    """The segment after ``name`` on the same timeline (across log boundaries)."""
    return segment_name(timeline_of(name), segment_number(name, segment_size) + 1, segment_size)


def segment_range(first: str, last: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> list[str]:
    """Every segment name from ``first`` to ``last`` inclusive, on ``first``'s timeline."""
    tli, a, b = timeline_of(first), segment_number(first, segment_size), segment_number(last, segment_size)
    return [segment_name(tli, n, segment_size) for n in range(a, b + 1)]


# -- LSNs ------------------------------------------------------------------------------------------------------


def parse_lsn(text: str) -> int:
    """``"0/3000060"`` -> 0x3000060."""
    high, sep, low = text.strip().partition("/")
    digits = frozenset("0123456789abcdefABCDEF")
    if not sep or not (0 < len(high) <= 8 and 0 < len(low) <= 8) or not digits.issuperset(high + low):
        raise ValueError(f"{text!r} is not an LSN (expected the form 0/3000060)")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(lsn: int) -> str:
    if not 0 <= lsn < 1 << 64:
        raise ValueError(f"LSN out of range: {lsn}")
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def segment_for_lsn(lsn: int | str, timeline: int = 1, segment_size: int = DEFAULT_SEGMENT_SIZE) -> str:
    """The name of the segment on ``timeline`` that holds the byte at ``lsn``."""
    value = parse_lsn(lsn) if isinstance(lsn, str) else lsn
    return segment_name(timeline, value // check_segment_size(segment_size), segment_size)


# -- history files ---------------------------------------------------------------------------------------------


def history_name(timeline: int) -> str:
    if not 0 < timeline <= 0xFFFFFFFF:
        raise ValueError(f"timeline out of range: {timeline}")
    return f"{timeline:08X}.history"


def parse_history(text: str) -> list[HistoryEntry]:
    """Entries of a timeline history file, oldest first; comments and blank lines are skipped.

    Each line is ``parentTLI<TAB>switchpoint<TAB>reason``: timeline ``parentTLI`` ended at ``switchpoint`` and the
    next timeline (that of the following line, or the file's own) begins there.
    """
    entries: list[HistoryEntry] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split("\t", 2) if "\t" in line else line.split(None, 2)
        try:
            tli = int(parts[0])
            lsn = format_lsn(parse_lsn(parts[1]))
        except (ValueError, IndexError):
            raise ValueError(
                f"history file line {number} is not 'parentTLI<TAB>switchpoint<TAB>reason': {raw!r}"
            ) from None
        if entries and tli <= entries[-1].parent_timeline:
            raise ValueError(f"history file line {number}: timeline IDs must increase ({raw!r})")
        entries.append(HistoryEntry(tli, lsn, parts[2].strip() if len(parts) > 2 else ""))
    return entries
