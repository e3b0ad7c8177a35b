"""The restore point record parser on synthetic segments: records that cross a page or a segment boundary, stale
pages of a recycled segment, a damaged CRC. (tests/integration/test_restore_points.py checks it against
pg_waldump on real WAL.)"""

from __future__ import annotations

import struct
import uuid

import pytest

from pgrecovery import Repository
from pgrecovery.errors import StorageError
from pgrecovery.wal.restore_points import (
    LONG_HEADER,
    PAGE,
    SHORT_HEADER,
    RestorePoint,
    crc32c,
    find_in_segment,
    record_key,
    recorded,
    stream_head,
    write_record,
)

SEGMENT = 1 << 20  # the smallest segment size keeps the test fast


def record(name: str, micros: int = 1_000_000) -> bytes:
    body = b"\xff" + bytes([72]) + struct.pack("<q", micros) + name.encode().ljust(64, b"\0")
    header = struct.pack("<IIQBBxx", 98, 0, 0, 0x70, 0)
    crc = crc32c(header[:20], crc32c(body))
    return header + struct.pack("<I", crc) + body


def segment(lsn: int, stream: bytes, *, stale_from: int | None = None) -> bytes:
    """A segment starting at ``lsn`` whose pages carry ``stream`` (zeros after it); pages from ``stale_from`` on
    carry another address, as a recycled segment's old tail does."""
    out = bytearray()
    pos = 0
    for page in range(0, SEGMENT, PAGE):
        first = page == 0
        header = LONG_HEADER if first else SHORT_HEADER
        addr = lsn + page if stale_from is None or page < stale_from else lsn + page - SEGMENT
        head = struct.pack("<HHIQI", 0xD110, 2 if first else 0, 1, addr, 0).ljust(header, b"\0")
        room = PAGE - header
        out += head + stream[pos : pos + room].ljust(room, b"\0")
        pos += room
    return bytes(out)


def test_crc32c_is_castagnoli() -> None:
    assert crc32c(b"123456789") == 0xE3069283


def test_a_record_crossing_a_page_is_found_with_its_lsns() -> None:
    first_payload = PAGE - LONG_HEADER
    at = first_payload - 48  # 8-aligned, crosses into the second page
    stream = b"\0" * at + record("crossing")
    (p,) = find_in_segment(segment(SEGMENT, stream), "crossing", segment_lsn=SEGMENT)
    assert p.record_lsn == f"0/{SEGMENT + LONG_HEADER + at:X}"
    end = SEGMENT + PAGE + SHORT_HEADER + (104 - 48)  # the next record's start, past the second page's header
    assert (p.lsn, p.timeline, p.source) == (f"0/{end:X}", 1, "wal")
    assert p.time is not None
    assert p.time.year == 2000
    assert find_in_segment(segment(SEGMENT, stream), "crossin", segment_lsn=SEGMENT) == []
    assert find_in_segment(segment(SEGMENT, stream), "rossing", segment_lsn=SEGMENT) == []


def test_a_record_crossing_into_the_next_segment_needs_its_head() -> None:
    room = SEGMENT - LONG_HEADER - (SEGMENT // PAGE - 1) * SHORT_HEADER
    rec = record("late")
    stream = b"\0" * (room - 40) + rec[:40]
    data = segment(SEGMENT, stream)
    nxt = segment(2 * SEGMENT, rec[40:])
    assert find_in_segment(data, "late", segment_lsn=SEGMENT) == []
    (p,) = find_in_segment(data, "late", segment_lsn=SEGMENT, following=stream_head(nxt, 2 * SEGMENT))
    assert p.lsn == f"0/{2 * SEGMENT + LONG_HEADER + 64:X}"


def test_stale_pages_and_a_bad_crc_are_not_restore_points() -> None:
    good = record("p")
    bad = bytearray(good)
    bad[30] ^= 1
    stream = good + bytes(bad)
    found = find_in_segment(segment(SEGMENT, stream), "p", segment_lsn=SEGMENT)
    assert [p.record_lsn for p in found] == [f"0/{SEGMENT + LONG_HEADER:X}"]
    late = b"\0" * (3 * PAGE) + good  # on the fourth page, which a recycled segment's stale header disowns
    assert find_in_segment(segment(SEGMENT, late, stale_from=3 * PAGE), "p", segment_lsn=SEGMENT) == []
    assert len(find_in_segment(segment(SEGMENT, late), "p", segment_lsn=SEGMENT)) == 1


def test_recorded_points_are_written_once_and_found_by_name() -> None:
    repo = Repository(f"memory://rp-{uuid.uuid4().hex}")
    a = RestorePoint(name="before upgrade/1", lsn="0/3000110", timeline=1, system_identifier="74")
    b = RestorePoint(name="before upgrade/1", lsn="0/2000110", timeline=1)
    other = RestorePoint(name="before", lsn="0/4000110", timeline=2)
    for p in (a, b, other):
        write_record(repo, p)
    write_record(repo, a)  # the same record again: a success
    assert record_key(a) == "wal/restore_points/00000001-0000000003000110-before%20upgrade%2F1.json"
    assert [p.lsn for p in recorded(repo, "before upgrade/1")] == ["0/2000110", "0/3000110"]
    assert [p.timeline for p in recorded(repo, "before")] == [2]
    assert recorded(repo, "nowhere") == []
    with pytest.raises(StorageError, match="already records another"):
        write_record(repo, RestorePoint(name="before upgrade/1", lsn="0/3000110", timeline=1, system_identifier="9"))
