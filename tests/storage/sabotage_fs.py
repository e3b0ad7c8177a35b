"""A filesystem that lies about writes: `SabotageFileSystem(inner, how)`.

Everything is passed to ``inner`` (a real filesystem: local disk, an emulator, an SFTP or WebDAV server) except the
bytes of a write, which it mishandles while reporting success, as a buggy wrapper or a misconfigured gateway would:

* ``"drop"``: the file accepts every byte and stores nothing;
* ``"truncate"``: only the first half of the bytes is stored;
* ``"corrupt"``: all the bytes are stored, one of them changed.

Writes through ``open(..., "wb"/"xb")`` and ``pipe_file`` are both affected, moves and deletes are not. Its protocol
is its own (as a wrapper's is), so pgrecovery treats it as a filesystem it does not know.
"""

from __future__ import annotations

import io
from typing import Any, Literal

from fsspec import AbstractFileSystem

How = Literal["drop", "truncate", "corrupt"]
HOWS: tuple[How, ...] = ("drop", "truncate", "corrupt")


def mishandle(data: bytes, how: How) -> bytes | None:
    """What gets stored instead of ``data`` (None: nothing at all)."""
    if how == "drop":
        return None
    if how == "truncate":
        return data[: len(data) // 2]
    if not data:
        return b"\0"
    damaged = bytearray(data)
    damaged[len(damaged) // 2] ^= 0x01
    return bytes(damaged)


class SabotageFileSystem(AbstractFileSystem):  # type: ignore[misc]
    protocol = "sabotage"
    cachable = False

    def __init__(self, inner: AbstractFileSystem, how: How) -> None:
        super().__init__()
        self.inner, self.how = inner, how
        self.enabled = True
        self.storage_options = {}

    def _strip_protocol(self, path: str) -> str:  # type: ignore[override]
        if isinstance(path, str) and path.startswith("sabotage://"):
            path = path[len("sabotage://") :]
        return str(self.inner._strip_protocol(path))

    # -- writes: mishandled ------------------------------------------------------------------------------------
    def _store(self, path: str, data: bytes) -> None:
        stored = mishandle(data, self.how) if self.enabled else data
        if stored is not None:
            self.inner.pipe_file(path, stored)

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        if mode == "create" and self.inner.exists(path):
            raise FileExistsError(path)
        self._store(path, bytes(value))

    def open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        if "r" in mode:
            return self.inner.open(path, mode, **kwargs)
        if "x" in mode and self.inner.exists(path):
            raise FileExistsError(path)
        return _LyingFile(self, path)

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        return self.open(path, mode, **kwargs)

    # -- everything else: passed through -----------------------------------------------------------------------
    def invalidate_cache(self, path: str | None = None) -> None:
        self.inner.invalidate_cache(path)

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        return dict(self.inner.info(path, **kwargs))

    def exists(self, path: str, **kwargs: Any) -> bool:
        return bool(self.inner.exists(path, **kwargs))

    def size(self, path: str) -> Any:
        return self.inner.size(path)

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        return list(self.inner.ls(path, detail=detail, **kwargs))

    def find(self, path: str, *args: Any, **kwargs: Any) -> Any:
        return self.inner.find(path, *args, **kwargs)

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        return bytes(self.inner.cat_file(path, start=start, end=end, **kwargs))

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        self.inner.mkdir(path, create_parents=create_parents, **kwargs)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        self.inner.makedirs(path, exist_ok=exist_ok)

    def mv(self, path1: str, path2: str, **kwargs: Any) -> None:
        self.inner.mv(path1, path2, **kwargs)

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        self.inner.cp_file(path1, path2, **kwargs)

    def rm_file(self, path: str) -> None:
        self.inner.rm_file(path)

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        self.inner.rm(path, recursive=recursive, maxdepth=maxdepth)


class _LyingFile(io.RawIOBase):
    """A writable file that takes every byte and, on close, stores what the sabotage says."""

    def __init__(self, fs: SabotageFileSystem, path: str) -> None:
        super().__init__()
        self._fs, self._path, self._buffer = fs, path, io.BytesIO()
        self.forced = False

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return self._buffer.write(data)

    def close(self) -> None:
        if not self.closed:
            try:
                self._fs._store(self._path, self._buffer.getvalue())
            finally:
                super().close()

    def commit(self) -> None:
        pass

    def discard(self) -> None:
        self._buffer = io.BytesIO()
