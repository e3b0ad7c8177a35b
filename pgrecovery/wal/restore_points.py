"""Named restore points, known before recovery: those pgrecovery recorded when it created them, and those found
in the archived WAL (a ``pg_create_restore_point()`` record carries its name).

Recorded points are small JSON objects beside the archive (see docs/wal.md)::

    wal/restore_points/<timeline, 8 hex>-<LSN, 16 hex>-<name, percent-encoded>.json

written once (no overwrite) with ``{"name", "lsn", "timeline", "time", "system_identifier"}``. ``lsn`` is what
``pg_create_restore_point`` returns: the end of the record, where a recovery to that name stops.

A WAL segment is a run of 8 KB pages, each starting with a header (24 bytes; 40 on a segment's first page).
Without the headers the pages form the stream of records; a restore point record is a 24-byte ``XLogRecord``
header (``xl_tot_len`` 98, resource manager 0, info 0x70), ``0xFF`` and length 72, then the 8-byte time
(microseconds since 2000-01-01) and the 64-byte NUL-terminated name. Records start 8-byte aligned, may cross
page and segment boundaries, and carry a CRC-32C that `find_in_segment` checks.

>>> find_in_segment(segment_bytes, "before_upgrade", segment_lsn=0x3000000)     # doctest: +SKIP
[RestorePoint(name='before_upgrade', lsn='0/3000110', timeline=1, ...)]
"""

from __future__ import annotations

import json
import struct
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Literal

import attrs

from .. import _walnames
from ..errors import AlreadyExists, EncryptionError, StorageError
from ._layout import WAL_PREFIX, verified_chunks

if TYPE_CHECKING:
    from ..storage import Storage
    from .index import WalIndex

RECORDS_PREFIX: Final = f"{WAL_PREFIX}/restore_points"
PAGE: Final = 8192
SHORT_HEADER: Final = 24  # MAXALIGN(sizeof(XLogPageHeaderData))
LONG_HEADER: Final = 40  # MAXALIGN(sizeof(XLogLongPageHeaderData))
XLP_LONG_HEADER: Final = 0x0002
RECORD_SIZE: Final = 98  # XLogRecord (24) + XLR_BLOCK_ID_DATA_SHORT, length 72, xl_restore_point (8 + 64)
NAME_OFFSET: Final = 34
_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)
_PAGE_HEADER = struct.Struct("<HHIQI")  # xlp_magic, xlp_info, xlp_tli, xlp_pageaddr, xlp_rem_len
_RECORD_HEADER = struct.Struct("<IIQBBxxI")  # xl_tot_len, xl_xid, xl_prev, xl_info, xl_rmid, pad, xl_crc

Source = Literal["recorded", "wal"]


@attrs.frozen(kw_only=True)
class RestorePoint:
    """One named restore point: ``lsn`` is where recovery to it stops (the end of its record, as
    ``pg_create_restore_point`` returns it); ``record_lsn`` the record's start (as pg_waldump prints it; None
    when only recorded). ``source``: ``recorded`` (pgrecovery wrote it down) or ``wal`` (found in the archive)."""

    name: str
    lsn: str
    timeline: int
    time: datetime | None = None
    source: Source = "recorded"
    record_lsn: str | None = None
    system_identifier: str | None = None

    @property
    def position(self) -> int:
        return _walnames.parse_lsn(self.lsn)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "lsn": self.lsn,
            "timeline": self.timeline,
            "time": self.time.isoformat() if self.time else None,
            "source": self.source,
        }


# -- what pgrecovery records -----------------------------------------------------------------------------------


def record_key(point: RestorePoint) -> str:
    """``wal/restore_points/<timeline>-<LSN>-<name>.json`` (the name percent-encoded)."""
    quoted = urllib.parse.quote(point.name, safe="")
    return f"{RECORDS_PREFIX}/{point.timeline:08X}-{point.position:016X}-{quoted}.json"


def write_record(repo: Storage, point: RestorePoint) -> str:
    """Store ``point`` under `record_key` (never overwriting: the same record already there is a success)."""
    key = record_key(point)
    body = {**point.to_dict(), "system_identifier": point.system_identifier}
    del body["source"]
    data = json.dumps(body, sort_keys=True).encode()
    try:
        repo.put_bytes(key, data)
    except AlreadyExists:
        if repo.read_bytes(key) != data:
            raise StorageError(f"{key} in {repo.display_url} already records another restore point") from None
    return key


def recorded(repo: Storage, name: str) -> list[RestorePoint]:
    """The restore points named ``name`` that pgrecovery recorded, oldest first (one object read per match)."""
    suffix = "-" + urllib.parse.quote(name, safe="") + ".json"
    found = []
    for entry in repo.children(RECORDS_PREFIX):
        if not entry.endswith(suffix) or entry.count("-") < 2:
            continue
        try:
            body = json.loads(repo.read_bytes(f"{RECORDS_PREFIX}/{entry}"))
            point = RestorePoint(
                name=str(body["name"]),
                lsn=_walnames.format_lsn(_walnames.parse_lsn(str(body["lsn"]))),
                timeline=int(body["timeline"]),
                time=datetime.fromisoformat(body["time"]) if body.get("time") else None,
                system_identifier=body.get("system_identifier"),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise StorageError(f"{RECORDS_PREFIX}/{entry} in {repo.display_url} cannot be read: {e}") from None
        if point.name == name:
            found.append(point)
    return sorted(found, key=lambda p: p.position)


def point_facts(conninfo: str, name: str, lsn: str) -> RestorePoint:
    """The restore point just created at ``lsn`` as a record: the server's timeline (that of the WAL file holding
    the record), its system identifier, and the time now."""
    import psycopg

    from .. import pgtools
    from .._pgdb import connect, first_line
    from ..errors import DatabaseError

    sql = (
        "select pg_walfile_name(%s::pg_lsn - 1), (select system_identifier::text from pg_control_system()), "
        "clock_timestamp()"
    )
    with connect(conninfo) as conn:
        try:
            row = conn.execute(sql, (lsn,)).fetchone()
        except psycopg.Error as e:
            raise DatabaseError(f"{pgtools.describe(conninfo)}: {first_line(e)}") from None
    if row is None:  # pragma: no cover - a select without from returns one row
        raise DatabaseError("pg_walfile_name returned no row")
    return RestorePoint(
        name=name,
        lsn=_walnames.format_lsn(_walnames.parse_lsn(lsn)),
        timeline=_walnames.timeline_of(str(row[0])),
        time=row[2],
        system_identifier=str(row[1]),
    )


# -- the WAL record --------------------------------------------------------------------------------------------


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_CRC_TABLE: Final = _crc32c_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC-32C (Castagnoli), as PostgreSQL computes a record's ``xl_crc`` (for short inputs)."""
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


class _Stream:
    """A segment's records without page headers, and the LSN of each stream offset.

    Pages whose header does not carry their own address (a recycled segment's stale tail) end the stream."""

    def __init__(self, data: bytes, segment_lsn: int) -> None:
        parts: list[bytes] = []
        self.starts: list[tuple[int, int]] = []  # (stream offset, LSN) where each page's payload begins
        self.timelines: list[int] = []
        offset = 0
        for page in range(0, len(data) - PAGE + 1, PAGE):
            _, info, tli, pageaddr, _ = _PAGE_HEADER.unpack_from(data, page)
            if pageaddr != segment_lsn + page:
                break
            header = LONG_HEADER if info & XLP_LONG_HEADER else SHORT_HEADER
            self.starts.append((offset, segment_lsn + page + header))
            self.timelines.append(tli)
            parts.append(data[page + header : page + PAGE])
            offset += PAGE - header
        self.data = b"".join(parts)
        self.segment_lsn = segment_lsn

    def _page(self, offset: int) -> int:
        lo, hi = 0, len(self.starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.starts[mid][0] <= offset:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def lsn(self, offset: int) -> int:
        """The LSN of the byte at stream ``offset``."""
        start, lsn = self.starts[self._page(offset)]
        return lsn + offset - start

    def end_lsn(self, offset: int) -> int:
        """The LSN just past stream ``offset - 1`` (a page boundary, not the next page's payload, at a page end)."""
        return self.lsn(offset - 1) + 1

    def timeline(self, offset: int) -> int:
        return self.timelines[self._page(offset)]


def _is_restore_point(record: bytes) -> bool:
    if len(record) < RECORD_SIZE:
        return False
    tot_len, _, _, info, rmid, crc = _RECORD_HEADER.unpack_from(record)
    if tot_len != RECORD_SIZE or rmid != 0 or info & 0xF0 != 0x70 or record[24] != 0xFF or record[25] != 72:
        return False
    return crc32c(record[:20], crc32c(record[24:RECORD_SIZE])) == int(crc)


def find_in_segment(data: bytes, name: str, *, segment_lsn: int, following: bytes = b"") -> list[RestorePoint]:
    """The restore point records named ``name`` that start in one segment (``data``, whose first byte is at
    ``segment_lsn``), oldest first. ``following``: the first stream bytes of the next segment (`stream_head`),
    for a record that crosses into it."""
    needle = name.encode() + b"\0"
    stream = _Stream(data, segment_lsn)
    own = len(stream.data)
    whole = len(stream.starts) * PAGE == len(data)  # a stream cut short by a stale page does not go on
    haystack = stream.data + (following[: RECORD_SIZE + 8] if whole else b"")
    found = []
    hit = haystack.find(needle)
    while hit >= 0:
        start = hit - NAME_OFFSET
        if 0 <= start < own and stream.lsn(start) % 8 == 0:
            record = haystack[start : start + RECORD_SIZE]
            if _is_restore_point(record):
                found.append(_point(stream, name, start, record, own))
        hit = haystack.find(needle, hit + 1)
    return found


def _point(stream: _Stream, name: str, start: int, record: bytes, own: int) -> RestorePoint:
    (micros,) = struct.unpack_from("<q", record, 26)
    end = start + RECORD_SIZE + (-RECORD_SIZE % 8)  # the next record's start: what pg_create_restore_point returns
    end_lsn = stream.end_lsn(end) if end <= own else stream.lsn(own - 1) + 1 + (end - own) + LONG_HEADER
    return RestorePoint(
        name=name,
        lsn=_walnames.format_lsn(end_lsn),
        record_lsn=_walnames.format_lsn(stream.lsn(start)),
        timeline=stream.timeline(start),
        time=_EPOCH + timedelta(microseconds=micros),
        source="wal",
    )


def stream_head(data: bytes, segment_lsn: int) -> bytes:
    """The first record bytes of a segment (what a record crossing into it from the previous one continues in)."""
    return _Stream(data[:PAGE], segment_lsn).data[: RECORD_SIZE + 8]


# -- the archive -----------------------------------------------------------------------------------------------


def read_segment(index: WalIndex, name: str) -> bytes | None:
    """The verified raw content of archived segment ``name`` (None when it is not archived)."""
    obj = index.find(name)
    if obj is None:
        return None
    with index.repo.open(obj.key) as raw:
        return b"".join(verified_chunks(raw, obj))


def scan_segments(index: WalIndex, segments: list[str], name: str) -> Iterator[tuple[str, list[RestorePoint]]]:
    """For each of ``segments`` (consecutive, oldest first; read newest first), the restore points named ``name``
    starting in it. Raises `StorageError` naming a segment that is missing or cannot be read."""
    following = b""
    for segment in reversed(segments):
        try:
            data = read_segment(index, segment)
        except (StorageError, EncryptionError) as e:
            raise StorageError(f"cannot scan {segment} for restore points: {e}") from None
        if data is None:
            raise StorageError(f"{segment} is not in the archive of {index.repo.display_url}")
        lsn = _walnames.segment_number(segment, index.segment_size) * index.segment_size
        yield segment, find_in_segment(data, name, segment_lsn=lsn, following=following)
        following = stream_head(data, lsn)


__all__ = [
    "RECORDS_PREFIX",
    "RestorePoint",
    "crc32c",
    "find_in_segment",
    "point_facts",
    "read_segment",
    "record_key",
    "recorded",
    "scan_segments",
    "stream_head",
    "write_record",
]
