from __future__ import annotations

import io
import os

import pytest

from pgrecovery.codec import CODECS, check_level, compress_bytes, compressor, decompress_bytes, open_decompressed
from pgrecovery.errors import ConfigurationError

DATA = b"".join(f"{i:08d} {os.urandom(8).hex()} some repeated words\n".encode() for i in range(20000))


@pytest.mark.parametrize("codec", CODECS)
def test_streamed_chunks_round_trip(codec: str) -> None:
    comp = compressor(codec, threads=2)  # type: ignore[arg-type]
    out = io.BytesIO()
    for i in range(0, len(DATA), 4096):
        out.write(comp.compress(DATA[i : i + 4096]))
    out.write(comp.flush())
    stored = out.getbuffer().nbytes
    out.seek(0)
    assert open_decompressed(out, codec).read() == DATA  # type: ignore[arg-type]
    if codec != "none":
        assert stored < len(DATA)


@pytest.mark.parametrize("codec", CODECS)
def test_empty_input(codec: str) -> None:
    assert decompress_bytes(compress_bytes(b"", codec), codec) == b""  # type: ignore[arg-type]


def test_levels_are_checked() -> None:
    assert check_level("zstd", None) == 3
    with pytest.raises(ConfigurationError, match="out of range for gzip"):
        check_level("gzip", 12)


def test_corrupted_zstd_is_detected() -> None:
    blob = bytearray(compress_bytes(DATA, "zstd"))
    blob[len(blob) // 2] ^= 0xFF
    with pytest.raises(Exception):  # noqa: B017 - zstd's own error type
        decompress_bytes(bytes(blob), "zstd")
