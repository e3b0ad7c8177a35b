"""A push's hashing and compression (`pgrecovery.wal._layout.read_and_pack`): a segment is compressed by two
threads as two zstd frames, one after the other; every reader gets the file back exactly, and damage in either
frame, or a lost second frame, is caught by the digest check."""

from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path

import pytest
import zstandard

from pgrecovery.codec import open_decompressed
from pgrecovery.errors import ChecksumMismatch
from pgrecovery.wal._layout import WalObject, object_key, read_and_pack, verified_chunks

NAME = "000000010000000000000041"


def tablelike(size: int, seed: int = 7) -> bytes:
    """Bytes that compress about as a real WAL segment does (text and numbers, varied; not blank filler)."""
    rnd = random.Random(seed)
    words = [bytes(rnd.choices(b"abcdefghijklmnopqrstuvwxyz", k=rnd.randint(2, 9))) for _ in range(4000)]
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rnd.choices(words, k=12)) + b" %d|%d\n" % (rnd.randrange(10**9), len(out))
    return bytes(out[:size])


def frames(packed: bytes) -> int:
    count = 0
    while packed:
        count += 1
        dobj = zstandard.ZstdDecompressor().decompressobj()
        dobj.decompress(packed)
        packed = dobj.unused_data
    return count


def pushed(tmp_path: Path, raw: bytes) -> tuple[WalObject, bytes]:
    (tmp_path / NAME).write_bytes(raw)
    _st, size, digest, packed = read_and_pack(str(tmp_path / NAME), "zstd", 1)
    assert (size, digest) == (len(raw), hashlib.sha256(raw).hexdigest())
    assert packed is not None
    return WalObject(name=NAME, key=object_key(NAME, digest, "zstd"), sha256=digest, codec="zstd"), packed


def test_a_segment_is_packed_in_two_frames_that_read_back_exactly(tmp_path: Path) -> None:
    raw = tablelike(16 << 20)
    obj, packed = pushed(tmp_path, raw)
    assert frames(packed) == 2
    one_frame = zstandard.ZstdCompressor(level=1, write_checksum=True).compress(raw)
    assert len(packed) < len(one_frame) * 1.02  # compressed as well as in one frame, near enough
    assert open_decompressed(io.BytesIO(packed), "zstd").read() == raw
    assert b"".join(verified_chunks(io.BytesIO(packed), obj)) == raw


def test_a_small_file_is_one_frame(tmp_path: Path) -> None:
    raw = tablelike(1 << 20)
    obj, packed = pushed(tmp_path, raw)
    assert frames(packed) == 1
    assert b"".join(verified_chunks(io.BytesIO(packed), obj)) == raw


@pytest.mark.parametrize("where", ["first frame", "second frame"])
def test_a_damaged_byte_in_either_frame_is_caught(tmp_path: Path, where: str) -> None:
    obj, packed = pushed(tmp_path, tablelike(16 << 20))
    dobj = zstandard.ZstdDecompressor().decompressobj()
    dobj.decompress(packed)
    first = len(packed) - len(dobj.unused_data)
    at = first // 2 if where == "first frame" else first + (len(packed) - first) // 2
    damaged = bytearray(packed)
    damaged[at] ^= 0x40
    with pytest.raises(ChecksumMismatch, match=rf"{obj.key}.*corrupt"):
        b"".join(verified_chunks(io.BytesIO(bytes(damaged)), obj))


def test_a_lost_second_frame_is_caught(tmp_path: Path) -> None:
    """A store that kept only the first frame (cut exactly at the boundary) gives a short file: never delivered."""
    obj, packed = pushed(tmp_path, tablelike(16 << 20))
    dobj = zstandard.ZstdDecompressor().decompressobj()
    dobj.decompress(packed)
    first = packed[: len(packed) - len(dobj.unused_data)]
    with pytest.raises(ChecksumMismatch, match="does not match the sha256 in its name"):
        b"".join(verified_chunks(io.BytesIO(first), obj))
