"""Hashing and compressing the segment being written (`pgrecovery.wal._filling`): pages are taken only once the
next one has started, the work is used by the push only if it is exactly the beginning of the file the push reads,
and the digest and compressed bytes are then those a push from scratch gives."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import time
from pathlib import Path

import pytest
import zstandard
from pgtesting import recorded_finish

from pgrecovery._walnames import segment_name
from pgrecovery.codec import compressor, open_decompressed
from pgrecovery.wal import _filling
from pgrecovery.wal._layout import read_and_pack

SEG_SIZE, PAGE = 1 << 24, 8192
PREV, NAME = segment_name(1, 0x40), segment_name(1, 0x41)


def page(segno: int, index: int, *, fill: int) -> bytes:
    """A WAL page as PostgreSQL lays it: the header's address says where it is (the first page's header is long)."""
    info = 0x0002 if index == 0 else 0
    head = struct.pack("=HHIQI4x", 0xD110, info, 1, segno * SEG_SIZE + index * PAGE, 0)
    if index == 0:
        head += struct.pack("=QII", 7, SEG_SIZE, PAGE)
    body = hashlib.sha256(f"{segno}/{index}/{fill}".encode()).digest() * (PAGE // 32)
    return head + body[len(head) :]


def packer() -> object:
    return compressor("zstd", None, threads=1)


@pytest.fixture
def pg_wal(tmp_path: Path) -> Path:
    wal = tmp_path / "pg_wal"
    (wal / "archive_status").mkdir(parents=True)
    (wal / "archive_status" / f"{PREV}.done").write_bytes(b"")
    # a recycled file under the next name: every page still says where it was before (segment 0x20)
    (wal / NAME).write_bytes(b"".join(page(0x20, i, fill=0) for i in range(SEG_SIZE // PAGE)))
    return wal


def write_pages(path: Path, first: int, count: int, fill: int = 1) -> None:
    with open(path, "r+b") as f:
        f.seek(first * PAGE)
        f.write(b"".join(page(0x41, i, fill=fill) for i in range(first, first + count)))


def wait_for(condition: object, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.01)


def test_the_pages_written_are_done_ahead_and_the_push_finishes_them(pg_wal: Path) -> None:
    filler = _filling.SegmentFiller(str(pg_wal), SEG_SIZE, packer).start()
    try:
        time.sleep(0.2)
        assert filler._current is None  # the recycled file is not followed: its first page is not its own
        write_pages(pg_wal / NAME, 0, 300)  # 2.3 MB written: all but the last page can be done
        wait_for(lambda: filler._current is not None and filler._current.done == 299 * PAGE)
        write_pages(pg_wal / NAME, 300, SEG_SIZE // PAGE - 300)  # the rest, then PostgreSQL marks it ready
        (pg_wal / "archive_status" / f"{NAME}.ready").write_bytes(b"")
        filling = filler.take(NAME)
    finally:
        filler.stop()
    assert filling is not None
    assert filling.done >= 299 * PAGE
    used, finish = recorded_finish(filling)

    _st, size, digest, packed = read_and_pack(str(pg_wal / NAME), "zstd", None, finish)
    raw = (pg_wal / NAME).read_bytes()
    assert used == [True]
    assert (size, digest) == (SEG_SIZE, hashlib.sha256(raw).hexdigest())
    assert packed is not None
    assert zstandard.ZstdDecompressor().decompressobj().decompress(packed) == raw
    assert filler.take(NAME) is None  # given once


def test_work_done_on_bytes_that_changed_since_is_not_used(pg_wal: Path) -> None:
    write_pages(pg_wal / NAME, 0, 400)
    filling = _filling.Filling(str(pg_wal / NAME), os.stat(pg_wal / NAME).st_ino, SEG_SIZE, PAGE, packer)
    filling.advance()
    assert filling.done == 399 * PAGE
    # a page done ahead is rewritten (the server crashed and wrote that WAL again, differently), then completed
    write_pages(pg_wal / NAME, 10, 1, fill=2)
    write_pages(pg_wal / NAME, 400, SEG_SIZE // PAGE - 400)
    used, finish = recorded_finish(filling)

    _st, _size, digest, packed = read_and_pack(str(pg_wal / NAME), "zstd", None, finish)
    raw = (pg_wal / NAME).read_bytes()
    assert used == [False]  # not used: the push hashed and compressed the file itself
    assert digest == hashlib.sha256(raw).hexdigest()
    assert packed is not None
    assert open_decompressed(io.BytesIO(packed), "zstd").read() == raw  # a push's own packing: maybe frames


@pytest.mark.parametrize("codec", ["none", "gzip", "lz4"])
def test_every_codec_gets_the_same_bytes_from_work_done_ahead(pg_wal: Path, codec: str) -> None:
    write_pages(pg_wal / NAME, 0, 400)
    filling = _filling.Filling(
        str(pg_wal / NAME), os.stat(pg_wal / NAME).st_ino, SEG_SIZE, PAGE, lambda: compressor(codec, None, threads=1)
    )
    filling.advance()
    assert filling.done == 399 * PAGE
    write_pages(pg_wal / NAME, 400, SEG_SIZE // PAGE - 400)
    used, finish = recorded_finish(filling)

    _st, _size, digest, packed = read_and_pack(str(pg_wal / NAME), codec, None, finish)
    raw = (pg_wal / NAME).read_bytes()
    assert used == [True]
    assert digest == hashlib.sha256(raw).hexdigest()
    assert packed is not None
    with open_decompressed(io.BytesIO(packed), codec) as back:
        assert back.read() == raw


def test_work_done_ahead_that_fails_leaves_the_push_to_do_it_all(pg_wal: Path) -> None:
    write_pages(pg_wal / NAME, 0, SEG_SIZE // PAGE)

    def broken(buf: bytearray, size: int) -> tuple[str, bytes] | None:
        raise ValueError("a bug in the work done ahead")

    _st, _size, digest, packed = read_and_pack(str(pg_wal / NAME), "zstd", None, broken)
    raw = (pg_wal / NAME).read_bytes()
    assert digest == hashlib.sha256(raw).hexdigest()
    assert packed is not None
    assert open_decompressed(io.BytesIO(packed), "zstd").read() == raw
