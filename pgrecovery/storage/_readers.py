"""Reading from a repository: a driver's file with its reads retried, a stream's digest, and when an object was
stored."""

from __future__ import annotations

import contextlib
import hashlib
import io
from datetime import UTC, datetime
from typing import Any, BinaryIO

from ..errors import StorageError
from ._drivers import CHUNK
from ._retry import Retry


class RetryingReader(io.RawIOBase):
    """A driver's read-only file whose reads are retried on transient errors.

    fsspec's buffered files move their position only after a successful fetch, so a failed read can be repeated.
    """

    def __init__(self, f: Any, retry: Retry, key: str) -> None:
        super().__init__()
        self._f, self._retry, self._key = f, retry, key

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return int(self._f.seek(offset, whence))

    def tell(self) -> int:
        return int(self._f.tell())

    def read(self, size: int | None = -1) -> bytes:
        n = -1 if size is None else size
        return bytes(self._retry("read", self._key, lambda: self._f.read(n)))

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(Exception):
                self._f.close()
        super().close()


def digest_stream(f: BinaryIO) -> tuple[int, str]:
    h, size = hashlib.sha256(), 0
    while data := f.read(4 * CHUNK):
        h.update(data)
        size += len(data)
    return size, h.hexdigest()


def modified_of(info: dict[str, Any], key: str, where: str) -> datetime:
    """The last-modified time in a driver's info() (s3fs: LastModified, gcsfs: updated, adlfs: last_modified)."""
    for name in (
        "LastModified",
        "last_modified",
        "updated",
        "mtime",
        "modified",
        "creation_time",
        "timeCreated",
        "created",
    ):
        value = info.get(name)
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=UTC)
        if isinstance(value, (int, float)):
            return datetime.fromtimestamp(value, UTC)
        if isinstance(value, str) and value:
            with contextlib.suppress(ValueError):
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
                return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    raise StorageError(f"{where} does not say when {key!r} was stored")
