"""Relation files page by page: which files hold relation data, which of their blocks changed since a given WAL
position, how a set of blocks is written down compactly, and reading just those blocks.

PostgreSQL stores a relation fork in 1 GB segment files (``<relfilenode>[_fork][.<segment>]``) of fixed-size pages
(``block_size``, 8 KB by default); every WAL-logged change to a page stamps it with the LSN of its record
(``pd_lsn``, the page's first 8 bytes: two native 32-bit integers, the high half first).
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import IO, Final

import attrs

GLOBAL_TABLESPACE: Final = 1664
DEFAULT_TABLESPACE: Final = 1663
SEGMENT_BYTES: Final = 1 << 30  # RELSEG_SIZE * BLCKSZ in every build we support (checked against the server)
_READ_BLOCKS: Final = 128  # pages per read while scanning LSNs (1 MiB at 8 KB)
_NAME = re.compile(r"^(\d+)(?:_(fsm|vm|init))?(?:\.(\d+))?$")


@attrs.frozen
class RelationFile:
    """Where a data directory path sits in the relation map: tablespace, database, relfilenode, fork, segment."""

    tablespace: int
    database: int
    relfilenode: int
    fork: str  # "main", "fsm", "vm" or "init"
    segment: int

    @property
    def directory_key(self) -> tuple[int, int]:
        return self.tablespace, self.database


def relation_file(rel: str) -> RelationFile | None:
    """The relation file a backup path names (``global/…``, ``base/<db>/…``, ``tblspc/<oid>/<version>/<db>/…``),
    or None for anything else (pg_xact, configuration, temporary relations, …)."""
    parts = rel.split("/")
    if len(parts) == 2 and parts[0] == "global":
        space, db, name = GLOBAL_TABLESPACE, 0, parts[1]
    elif len(parts) == 3 and parts[0] == "base" and parts[1].isdigit():
        space, db, name = DEFAULT_TABLESPACE, int(parts[1]), parts[2]
    elif len(parts) == 5 and parts[0] == "tblspc" and parts[1].isdigit() and parts[3].isdigit():
        space, db, name = int(parts[1]), int(parts[3]), parts[4]
    else:
        return None
    m = _NAME.match(name)
    if m is None:
        return None
    return RelationFile(space, db, int(m.group(1)), m.group(2) or "main", int(m.group(3) or 0))


def encode_ranges(blocks: Iterable[int]) -> str:
    """Ascending block numbers as ranges: ``[0, 1, 2, 9]`` -> ``"0-2,9"``."""
    out: list[str] = []
    start = prev = -2
    for b in blocks:
        if b != prev + 1:
            if start >= 0:
                out.append(f"{start}-{prev}" if prev > start else str(start))
            start = b
        prev = b
    if start >= 0:
        out.append(f"{start}-{prev}" if prev > start else str(start))
    return ",".join(out)


def decode_ranges(text: str) -> list[tuple[int, int]]:
    """``"0-2,9"`` -> ``[(0, 3), (9, 1)]`` (first block, count), checked to ascend without overlap."""
    ranges: list[tuple[int, int]] = []
    end = 0
    for part in text.split(",") if text else ():
        first, _, last = part.partition("-")
        a, b = int(first), int(last or first)
        if a < end or b < a:
            raise ValueError(f"block ranges {text[:60]!r} do not ascend")
        ranges.append((a, b - a + 1))
        end = b + 1
    return ranges


def changed_since(f: IO[bytes], size: int, block_size: int, since: int) -> list[int]:
    """The blocks of a relation file (``size`` bytes, read from ``f``) whose page LSN is after ``since``, and the
    never-stamped ones (LSN 0: new or zeroed pages). Reads the whole file."""
    words = block_size // 4
    changed: list[int] = []
    block = 0
    total = size // block_size
    while block < total:
        want = min(_READ_BLOCKS, total - block) * block_size
        data = f.read(want)
        n = len(data) // block_size
        if n == 0:
            break  # shorter than when it was listed: what is gone is gone
        page = array("I")
        page.frombytes(data[: n * block_size])
        for i, (hi, lo) in enumerate(zip(page[0::words], page[1::words], strict=True)):
            lsn = hi << 32 | lo
            if lsn > since or lsn == 0:
                changed.append(block + i)
        block += n
    return changed


def read_blocks(f: IO[bytes], ranges: Sequence[tuple[int, int]], block_size: int) -> Iterator[bytes]:
    """The blocks ``ranges`` names, in order, read up to 1 MiB at a time; zeros for blocks past the end of the
    file (it shrank while being read: WAL replay from the backup's start truncates it again)."""
    for first, count in ranges:
        f.seek(first * block_size)
        for at in range(0, count, _READ_BLOCKS):
            want = min(_READ_BLOCKS, count - at) * block_size
            data = f.read(want)
            yield data + bytes(want - len(data)) if len(data) < want else data
