"""Moving bytes between PostgreSQL programs and the repository, compressed and checksummed on the way."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, BinaryIO, Protocol, cast

from ._fsutil import atomic_file
from ._objects import ObjectWriter, StoredObject
from .codec import Codec, compressor, open_decompressed
from .errors import ChecksumMismatch, PgRecoveryError
from .manifest import FileEntry
from .progress import Meter
from .repository import Repository
from .storage.repository import CHUNK

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
    repo: Repository,
    src: Path,
    key: str,
    codec: Codec,
    *,
    level: int | None,
    meter: Meter | None,
    threads: int = 1,
) -> tuple[StoredObject, int]:
    """Compress and store one local file; returns what was stored and its raw size."""
    with open(src, "rb", buffering=0) as f:
        writer = repo.writer(key)
        try:
            raw, _ = pump(lambda: f.read(CHUNK), writer, codec, level=level, threads=threads, meter=meter)
        except BaseException:
            writer.abort()
            raise
        return writer.commit(), raw


class _Verifying(io.RawIOBase):
    """Passes stored bytes through and checks their size and sha256 against the manifest at the end."""

    def __init__(self, raw: BinaryIO, entry: FileEntry, label: str) -> None:
        super().__init__()
        self._raw, self._entry, self._label = raw, entry, label
        self._hash, self._size, self._checked = hashlib.sha256(), 0, False

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self._raw.read(len(b))
        if data:
            self._hash.update(data)
            self._size += len(data)
            b[: len(data)] = data
        elif not self._checked:
            self._checked = True
            _check_digest(self._label, self._entry, self._size, self._hash.hexdigest())
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


class _Guarded(io.RawIOBase):
    """Turns a decompressor's own errors (bad frame, checksum) into `ChecksumMismatch` naming the object."""

    def __init__(self, inner: BinaryIO, label: str) -> None:
        super().__init__()
        self._inner, self._label = inner, label

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        try:
            data = self._inner.read(len(b))
        except PgRecoveryError:
            raise
        except Exception as e:  # noqa: BLE001 - zstd, gzip and lz4 each have their own error types
            raise ChecksumMismatch(
                f"{self._label} cannot be decompressed ({type(e).__name__}: {e}): the stored object is damaged; "
                "restore from another backup or repository copy"
            ) from None
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._inner.close()
        super().close()


def _check_digest(label: str, entry: FileEntry, size: int, digest: str) -> None:
    if size != entry.size or digest != entry.sha256:
        raise ChecksumMismatch(
            f"{label} is corrupt: {size} bytes with sha256 {digest[:16]}..., the manifest says {entry.size} bytes, "
            f"{entry.sha256[:16]}...; restore from another backup or repository copy"
        )


def check_stored(repo: Repository, key: str, entry: FileEntry) -> None:
    """Re-read a stored file and raise `ChecksumMismatch` unless it matches the manifest."""
    size, digest = repo.digest(key)
    _check_digest(key, entry, size, digest)


def open_entry(repo: Repository, key: str, entry: FileEntry, *, verify: bool = True) -> BinaryIO:
    """The decompressed content of a stored backup file; with ``verify`` the stored bytes are checked as read."""
    raw = repo.open(key)
    src = cast(BinaryIO, io.BufferedReader(_Verifying(raw, entry, key), CHUNK)) if verify else raw
    if entry.codec == "none":
        return src
    return cast(BinaryIO, io.BufferedReader(_Guarded(open_decompressed(src, entry.codec), key), CHUNK))


def copy_out(src: Readable, dst: IO[bytes], meter: Meter | None = None) -> None:
    while chunk := src.read(CHUNK):
        dst.write(chunk)
        if meter is not None:
            meter.add(len(chunk))


def materialise(repo: Repository, key: str, entry: FileEntry, dest: Path, meter: Meter | None = None) -> None:
    """Write the decompressed, verified content of a stored file to ``dest`` (temp name, then rename; not fsynced:
    what reads it next, pg_restore or a starting server, comes after the restore as a whole)."""
    with open_entry(repo, key, entry) as src, atomic_file(str(dest), sync=False) as out:
        copy_out(src, out, meter)
        # drain the verifier: decompressors may stop before reading the stored stream's last byte
        while src.read(CHUNK):
            pass


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
