"""Streaming compression: none, gzip, zstd (multi-threaded) and lz4.

Compressors are push-style (``compress(chunk)`` then ``flush()``) so that a producer such as pg_dump can be
piped straight into the repository; decompression is pull-style (a readable stream) so that a restore can feed
pg_restore without a local copy.
"""

from __future__ import annotations

import gzip
import io
import os
import zlib
from typing import BinaryIO, Final, Literal, Protocol, cast, get_args

from .errors import ConfigurationError

Codec = Literal["none", "gzip", "zstd", "lz4"]
CODECS: Final[tuple[Codec, ...]] = get_args(Codec)
SUFFIX: Final[dict[Codec, str]] = {"none": "", "gzip": ".gz", "zstd": ".zst", "lz4": ".lz4"}
DEFAULT_LEVEL: Final[dict[Codec, int]] = {"none": 0, "gzip": 6, "zstd": 3, "lz4": 0}
LEVEL_RANGE: Final[dict[Codec, tuple[int, int]]] = {
    "none": (0, 0),
    "gzip": (0, 9),
    "zstd": (-7, 22),
    "lz4": (0, 16),
}


class Compressor(Protocol):
    def compress(self, data: bytes, /) -> bytes: ...

    def flush(self) -> bytes: ...


def check_codec(codec: str) -> Codec:
    """Return ``codec`` as a `Codec`, or raise naming the accepted values."""
    if codec not in CODECS:
        raise ConfigurationError(f"unknown compression {codec!r}: use one of {', '.join(CODECS)}")
    return codec


def check_level(codec: Codec, level: int | None) -> int:
    """The effective level for ``codec``; raise if ``level`` is out of the codec's range."""
    if level is None:
        return DEFAULT_LEVEL[codec]
    low, high = LEVEL_RANGE[codec]
    if not low <= level <= high:
        raise ConfigurationError(f"compression level {level} is out of range for {codec}: use {low}..{high}")
    return level


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


class _Identity:
    def compress(self, data: bytes, /) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""


def compressor(codec: Codec, level: int | None = None, threads: int = 0) -> Compressor:
    """A push-style compressor. ``threads`` applies to zstd only (0: one per available core)."""
    lvl = check_level(codec, level)
    if codec == "none":
        return _Identity()
    if codec == "gzip":
        return cast(Compressor, zlib.compressobj(lvl, zlib.DEFLATED, 31))
    if codec == "zstd":
        import zstandard

        n = threads if threads > 0 else default_threads()
        # One worker gains nothing over the synchronous path and adds a copy; use it only for >= 2.
        cctx = zstandard.ZstdCompressor(level=lvl, threads=n if n > 1 else 0, write_checksum=True)
        return cast(Compressor, cctx.compressobj())
    import lz4.frame

    lz = lz4.frame.LZ4FrameCompressor(compression_level=lvl, content_checksum=True)

    class _Lz4:
        started = False

        def compress(self, data: bytes, /) -> bytes:
            head = b""
            if not self.started:
                head, self.started = lz.begin(), True
            return head + cast(bytes, lz.compress(data))

        def flush(self) -> bytes:
            head = b"" if self.started else lz.begin()
            self.started = True
            return head + cast(bytes, lz.flush())

    return _Lz4()


def open_decompressed(raw: BinaryIO, codec: Codec) -> BinaryIO:
    """Wrap a readable binary stream so that reads return decompressed bytes."""
    if codec == "none":
        return raw
    if codec == "gzip":
        return cast(BinaryIO, gzip.GzipFile(fileobj=raw, mode="rb"))
    if codec == "zstd":
        import zstandard

        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_size=1 << 20, read_across_frames=True)
        return cast(BinaryIO, io.BufferedReader(reader, buffer_size=1 << 20))
    import lz4.frame

    return cast(BinaryIO, lz4.frame.LZ4FrameFile(raw, mode="rb"))


def compress_bytes(data: bytes, codec: Codec, level: int | None = None) -> bytes:
    c = compressor(codec, level, threads=1)
    return c.compress(data) + c.flush()


def decompress_bytes(data: bytes, codec: Codec) -> bytes:
    return open_decompressed(io.BytesIO(data), codec).read()
