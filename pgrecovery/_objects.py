"""What a write into the repository produces, and the shape every streaming writer has (formats layer: below
storage, so that encryption can wrap a writer without knowing storage)."""

from __future__ import annotations

import hashlib
from typing import Protocol, Self

import attrs


@attrs.frozen(kw_only=True)
class StoredObject:
    """What a completed write produced: the key and what a reader can check it against."""

    key: str
    size: int
    sha256: str


class ObjectWriter(Protocol):
    """A streaming write that becomes visible under its key only on `commit`."""

    key: str

    def write(self, data: bytes, /) -> None: ...

    def commit(self) -> StoredObject: ...

    def abort(self) -> None: ...

    def __enter__(self) -> ObjectWriter: ...

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None: ...


class HashingWriter:
    """Counts and hashes what is written, then hands bytes to `_write_raw`; a ``with`` block commits on success
    and aborts on an exception. Every writer (storage's and encryption's) is one."""

    key: str

    def __init__(self, key: str) -> None:
        self.key = key
        self._hash = hashlib.sha256()
        self._hashed = True
        self._size = 0
        self._done = False

    def unhashed(self) -> None:
        """Do not hash what is written (before the first write): the result's sha256 is then empty. Only for a
        writer that does not check what it stored against that digest (the local one)."""
        self._hashed = False

    def write(self, data: bytes | bytearray | memoryview, /) -> None:
        if data:
            if self._hashed:
                self._hash.update(data)
            self._size += len(data)
            self._write_raw(data)

    def _write_raw(self, data: bytes | bytearray | memoryview) -> None:
        raise NotImplementedError

    def commit(self) -> StoredObject:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def _result(self) -> StoredObject:
        self._done = True
        return StoredObject(key=self.key, size=self._size, sha256=self._hash.hexdigest() if self._hashed else "")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._done:
            return
        if exc_type is None:
            self.commit()
        else:
            self.abort()


__all__ = ["HashingWriter", "ObjectWriter", "StoredObject"]
