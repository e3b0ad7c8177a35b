"""How archived WAL objects are named, and the one check of an object against the digest in its name.

Repository layout (see docs/wal.md)::

    wal/<timeline, 8 hex>/<file name>-<sha256 of the raw file>.<codec suffix>

The info layer of the WAL area: the index, copies and verification read objects through this module without
loading the archiver.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any, BinaryIO, Final

import attrs

from .. import _walnames
from ..codec import SUFFIX, Codec, check_level, compressor, open_decompressed
from ..errors import ChecksumMismatch, PgRecoveryError, StorageError

if TYPE_CHECKING:
    from ..storage import Storage

log = logging.getLogger("pgrecovery.wal")
WAL_PREFIX: Final = "wal"
CHUNK: Final = 1 << 20
IN_MEMORY: Final = 64 << 20  # a WAL file up to this size is read once, hashed and compressed from memory
_CODEC_OF_SUFFIX: Final[dict[str, Codec]] = {suffix: codec for codec, suffix in SUFFIX.items()}


@attrs.frozen(kw_only=True)
class WalObject:
    """One archived WAL file: its name, where it is stored and what its raw content hashes to."""

    name: str
    key: str
    sha256: str
    codec: Codec

    @property
    def timeline(self) -> int:
        return _walnames.timeline_of(self.name)


def timeline_dir(timeline: int) -> str:
    """The repository prefix holding a timeline's files: ``wal/0000000T``."""
    return f"{WAL_PREFIX}/{timeline:08X}"


def object_key(name: str, sha256: str, codec: Codec) -> str:
    """``wal/<timeline>/<name>-<sha256><suffix>``."""
    return f"{timeline_dir(_walnames.timeline_of(name))}/{name}-{sha256}{SUFFIX[codec]}"


def parse_object_name(object_name: str) -> tuple[str, str, Codec] | None:
    """(WAL file name, sha256, codec) of a stored object's base name, or None for anything else."""
    name, sep, rest = object_name.partition("-")
    if not sep or not _walnames.is_wal_file(name) or len(rest) < 64:
        return None
    digest, suffix = rest[:64], rest[64:]
    codec = _CODEC_OF_SUFFIX.get(suffix)
    if codec is None or any(c not in "0123456789abcdef" for c in digest):
        return None
    return name, digest, codec


def object_at(key: str) -> WalObject | None:
    """The `WalObject` stored under ``key``, or None when its base name is not one of ours."""
    parsed = parse_object_name(key.rsplit("/", 1)[-1])
    if parsed is None:
        return None
    name, digest, codec = parsed
    return WalObject(name=name, key=key, sha256=digest, codec=codec)


# -- the digest check ------------------------------------------------------------------------------------------


def verified_chunks(raw: BinaryIO, obj: WalObject, *, where: str = "", then: str = "") -> Iterator[bytes]:
    """The decompressed content of ``obj`` read from ``raw`` (its stored bytes), chunk by chunk.

    Raises `ChecksumMismatch` naming the object when it cannot be decompressed, or, after the last chunk, when
    the content does not hash to the sha256 in its name; a caller publishes what it wrote only once the iteration
    has ended. An OS error while reading is a `StorageError`. ``where`` (" in <repository>") and ``then`` (what
    the caller did about it) complete the mismatch's message.
    """
    h = hashlib.sha256()
    stream = open_decompressed(raw, obj.codec)
    while chunk := _read_decompressed(stream, obj):
        h.update(chunk)
        yield chunk
    if h.hexdigest() != obj.sha256:
        raise ChecksumMismatch(
            f"archived object {obj.key}{where} does not match the sha256 in its name: it is corrupt{then}"
        )


def read_verified(repo: Storage, obj: WalObject) -> bytes:
    """The verified raw content of ``obj`` (for small files: history, .backup)."""
    with repo.open(obj.key) as raw:
        return b"".join(verified_chunks(raw, obj))


def check_object(repo: Storage, obj: WalObject) -> None:
    """Read ``obj`` whole and raise `ChecksumMismatch` unless it matches the sha256 in its name."""
    with repo.open(obj.key) as raw:
        for _ in verified_chunks(raw, obj):
            pass


def _read_decompressed(stream: Any, obj: WalObject) -> bytes:
    """One chunk of decompressed bytes; a codec error is corruption, an OS error a storage failure."""
    import gzip

    try:
        return bytes(stream.read(CHUNK))
    except PgRecoveryError:
        raise
    except gzip.BadGzipFile as e:
        raise ChecksumMismatch(f"archived object {obj.key} cannot be decompressed ({e}): it is corrupt") from None
    except OSError as e:
        raise StorageError(f"cannot read {obj.key}: {e}") from None
    except Exception as e:  # noqa: BLE001 - zstd, gzip and lz4 each have their own error types
        raise ChecksumMismatch(f"archived object {obj.key} cannot be decompressed ({e}): it is corrupt") from None


_buffers = threading.local()  # per thread: a buffer a WAL file is read into, kept from one file to the next


def _read_buffer(size: int) -> bytearray:
    """This thread's read buffer, of at least ``size`` bytes. Reused: a fresh 16 MB buffer costs page faults, and
    reading, hashing and compressing from pages not yet touched took 10 ms more per segment (measured)."""
    buf: bytearray | None = getattr(_buffers, "buf", None)
    if buf is None or len(buf) < size:
        buf = _buffers.buf = bytearray(size)
    return buf


_helper_pool: ThreadPoolExecutor | None = None
_helper_lock = threading.Lock()


def _helpers() -> ThreadPoolExecutor:
    """The threads that hash (and compress a part) beside a push's own thread. Kept, with their compressors and
    buffers, from one file to the next; four, for the pushes a worker runs at once."""
    global _helper_pool
    with _helper_lock:
        if _helper_pool is None:
            _helper_pool = ThreadPoolExecutor(4, thread_name_prefix="wal-pack")
        return _helper_pool


def _zstd_compressor(level: int) -> Any:
    """This thread's zstd compressor for ``level`` (with checksums). Reused: a new one allocates its working
    memory afresh, and its first use pays the page faults, 1-2.5 ms per segment (measured)."""
    kept: dict[int, Any] | None = getattr(_buffers, "zstd", None)
    if kept is None:
        kept = _buffers.zstd = {}
    if level not in kept:
        import zstandard

        kept[level] = zstandard.ZstdCompressor(level=level, write_checksum=True)
    return kept[level]


Ahead = Callable[[bytearray, int], "tuple[str, bytes] | None"]  # see read_and_pack


def read_and_pack(
    path: str, codec: Codec, level: int | None, ahead: Ahead | None = None
) -> tuple[os.stat_result, int, str, bytes | None]:
    """A WAL file's stat, size and sha256 and (up to `IN_MEMORY`) its compressed bytes, from one read: the digest
    is of exactly the bytes compressed, hashed in a thread while they compress (both release the GIL). A larger
    file is only hashed here (None): it is compressed as it streams to the repository. ``ahead(buffer, size)``:
    the digest and compressed bytes of what was read, from work done while the file was written, if it is still
    valid for exactly those bytes (`pgrecovery.wal._filling.Filling.finish`)."""
    with open(path, "rb", buffering=0) as f:
        st = os.fstat(f.fileno())
        if st.st_size > IN_MEMORY:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
            return st, f.tell(), digest, None
        buf = _read_buffer(st.st_size + 1)
        size = 0
        with memoryview(buf) as view:
            while size <= st.st_size and (n := f.readinto(view[size : st.st_size + 1])):
                size += n
    done = None
    if ahead is not None:
        try:
            done = ahead(buf, size)
        except Exception as e:  # noqa: BLE001 - work done ahead only saves time: without it, the push does it all
            log.debug("%s: work done ahead not used: %s", path, e)
    if done is not None:
        return st, size, done[0], done[1]
    with memoryview(buf) as view, view[:size] as data:
        digest, packed = _hash_and_pack(data, codec, level)
    return st, size, digest, packed


# zstd: the share of a file that the calling thread compresses while another thread hashes the whole file and
# then compresses the rest, each part a frame of its own (concatenated frames are one zstd stream; every reader
# here reads across frames). Learnt from the last push's timings so that both threads finish together; hashing
# runs at about 2.5 times zstd level 1's speed, which puts the share near 0.7 (measured: 25 ms against 35 ms for
# one frame beside the hash, on a real 16 MB segment, two cores).
_share = 0.7
_SPLIT_MIN: Final = 4 << 20  # smaller files: one frame beside the hash


def _hash_and_pack(data: memoryview, codec: Codec, level: int | None) -> tuple[str, bytes]:
    """The sha256 of ``data`` and ``data`` compressed, both at once on two threads (both release the GIL)."""
    global _share
    h = hashlib.sha256()
    if codec != "zstd" or len(data) < _SPLIT_MIN:
        hashed = _helpers().submit(h.update, data)
        try:
            packed = _pack(data, codec, level)
        finally:
            wait([hashed])
        hashed.result()
        return h.hexdigest(), packed
    cut = int(len(data) * _share) & ~0xFFFF

    def hash_then_tail() -> tuple[bytes, float, float]:
        t0 = time.perf_counter()
        h.update(data)
        t1 = time.perf_counter()
        tail = _pack(data[cut:], codec, level)
        return tail, t1 - t0, time.perf_counter() - t1

    helper = _helpers().submit(hash_then_tail)
    try:
        t0 = time.perf_counter()
        head = _pack(data[:cut], codec, level)
        head_time = time.perf_counter() - t0
    finally:
        wait([helper])  # it reads ``data``: never left running once the caller releases it
    tail, hash_time, tail_time = helper.result()
    per_byte = (head_time + tail_time) / len(data)  # compression, seconds per byte
    if per_byte > 0:
        # head: share * size * per_byte = hash_time + (1 - share) * size * per_byte
        _share = min(0.9, max(0.5, (1 + hash_time / (len(data) * per_byte)) / 2))
    return h.hexdigest(), head + tail


def _pack(data: memoryview, codec: Codec, level: int | None) -> bytes:
    """``data`` compressed whole: for zstd in one call (a frame with its checksum, as the streaming compressor
    writes)."""
    if codec == "zstd":
        return bytes(_zstd_compressor(check_level(codec, level)).compress(data))
    comp = compressor(codec, level, threads=1)
    return comp.compress(bytes(data)) + comp.flush()


__all__ = [
    "CHUNK",
    "WAL_PREFIX",
    "WalObject",
    "check_object",
    "object_at",
    "object_key",
    "parse_object_name",
    "read_and_pack",
    "read_verified",
    "timeline_dir",
    "verified_chunks",
]
