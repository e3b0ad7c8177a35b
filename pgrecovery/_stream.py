"""Moving bytes between PostgreSQL programs and the repository, compressed and checksummed on the way."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, BinaryIO, Protocol

from .codec import Codec, compressor, open_decompressed
from .errors import ChecksumMismatch
from .manifest import FileEntry
from .progress import Meter
from .storage import CHUNK, ObjectWriter, Repository, StoredObject

_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class Readable(Protocol):
    """What the copy helpers need from a source: ``read`` and ``close``."""

    def read(self, n: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


def widen_pipe(fd: int) -> None:
    """Ask for a 1 MiB pipe buffer (fewer, larger reads); harmless where refused."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, _F_SETPIPE_SZ, CHUNK)


def pump(
    read: Callable[[], bytes],
    writer: ObjectWriter,
    codec: Codec,
    *,
    level: int | None,
    threads: int,
    meter: Meter | None = None,
    inspect: Callable[[bytes], None] | None = None,
) -> tuple[int, int]:
    """Read chunks until ``read`` returns b"", compress, write. Returns (raw bytes, stored bytes) so far.

    The writer is neither committed nor aborted here: the caller decides once the producer's exit is known.
    """
    comp = compressor(codec, level, threads)
    raw = stored = 0
    while chunk := read():
        raw += len(chunk)
        if inspect is not None:
            inspect(chunk)
        out = comp.compress(chunk)
        if out:
            writer.write(out)
            stored += len(out)
        if meter is not None:
            meter.add(len(chunk))
    out = comp.flush()
    writer.write(out)
    return raw, stored + len(out)


def fd_reader(fd: int, size: int = CHUNK) -> Callable[[], bytes]:
    return lambda: os.read(fd, size)


def upload_file(
    repo: Repository, src: Path, key: str, codec: Codec, *, level: int | None, meter: Meter | None
) -> tuple[StoredObject, int]:
    """Compress and store one local file; returns what was stored and its raw size."""
    with open(src, "rb", buffering=0) as f:
        writer = repo.writer(key)
        try:
            raw, _ = pump(lambda: f.read(CHUNK), writer, codec, level=level, threads=1, meter=meter)
        except BaseException:
            writer.abort()
            raise
        return writer.commit(), raw


class _Verifying:
    """A readable stream that checks size and sha256 of what it passed on once the end is reached."""

    def __init__(self, raw: BinaryIO, entry: FileEntry, label: str) -> None:
        import hashlib

        self._raw, self._entry, self._label = raw, entry, label
        self._hash, self._size = hashlib.sha256(), 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        if data:
            self._hash.update(data)
            self._size += len(data)
        elif n != 0:
            self._check()
        return data

    def readinto(self, b: bytearray | memoryview) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def _check(self) -> None:
        if self._size != self._entry.size or self._hash.hexdigest() != self._entry.sha256:
            raise ChecksumMismatch(
                f"{self._label} is corrupt: read {self._size} bytes with sha256 {self._hash.hexdigest()[:16]}..., "
                f"the manifest says {self._entry.size} bytes, {self._entry.sha256[:16]}...; restore from another "
                "backup or repository copy"
            )

    def close(self) -> None:
        self._raw.close()

    @property
    def closed(self) -> bool:
        return bool(self._raw.closed)


def open_entry(repo: Repository, key: str, entry: FileEntry, *, verify: bool = True) -> BinaryIO:
    """The decompressed content of a stored backup file; with ``verify`` the stored bytes are checked as read."""
    raw = repo.open(key)
    src: BinaryIO = _Verifying(raw, entry, key) if verify else raw  # type: ignore[assignment]
    return open_decompressed(src, entry.codec)


def copy_out(src: Readable, dst: IO[bytes], meter: Meter | None = None) -> None:
    while chunk := src.read(CHUNK):
        dst.write(chunk)
        if meter is not None:
            meter.add(len(chunk))


def materialise(repo: Repository, key: str, entry: FileEntry, dest: Path, meter: Meter | None = None) -> None:
    """Write the decompressed, verified content of a stored file to ``dest`` (temp name, then rename)."""
    tmp = dest.with_name(f".{dest.name}.part")
    with open_entry(repo, key, entry) as src, open(tmp, "wb") as out:
        copy_out(src, out, meter)
        # drain the verifier: decompressors may stop before reading the stored stream's last byte
        while src.read(CHUNK):
            pass
    os.replace(tmp, dest)


class Feeder(threading.Thread):
    """Copies a stream into a process's stdin in the background; keeps the first error for the caller."""

    def __init__(self, src: Readable, dst: IO[bytes], meter: Meter | None = None) -> None:
        super().__init__(daemon=True)
        self.src, self.dst, self.meter = src, dst, meter
        self.error: BaseException | None = None
        self.broken_pipe = False

    def run(self) -> None:
        try:
            copy_out(self.src, self.dst, self.meter)
        except BrokenPipeError:
            self.broken_pipe = True  # the program stopped reading (it exited, or needed no more)
        except BaseException as e:  # noqa: BLE001 - re-raised by result()
            self.error = e
        finally:
            with contextlib.suppress(OSError):
                self.dst.close()
            with contextlib.suppress(Exception):
                self.src.close()

    def result(self) -> None:
        self.join()
        if self.error is not None:
            raise self.error


def copy_tree_decompressed(pairs: list[tuple[Callable[[], BinaryIO], Path]], workers: int) -> None:
    """Decompress several stored files to local paths in parallel."""
    from concurrent.futures import ThreadPoolExecutor

    def one(item: tuple[Callable[[], BinaryIO], Path]) -> None:
        opener, dest = item
        with opener() as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out, CHUNK)
            while src.read(CHUNK):
                pass

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for f in [pool.submit(one, p) for p in pairs]:
            f.result()
