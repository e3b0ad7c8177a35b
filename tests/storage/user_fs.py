"""A filesystem written the way fsspec's developer docs tell a third party to: `UserFileSystem`.

It subclasses `AbstractFileSystem` and fills in the template's methods (``ls``, ``_open`` returning an
`AbstractBufferedFile` subclass with ``_initiate_upload`` / ``_upload_chunk`` / ``_fetch_range``, ``cp_file``,
``_rm``), and nothing else: not ``open``, not ``info`` (fsspec derives it from ``ls``), not ``mv`` (fsspec's is
``copy`` then ``rm``), not ``pipe_file``. Directories are implicit, as on an object store (``mkdir`` and
``makedirs`` are the base class's no-ops).

Objects live as flat files in one local directory (the ``store`` option), so that separate processes (a
PostgreSQL server's archive_command) share them: each object is a file named ``o~<quoted path>``; an upload goes to
``u~<random>`` in the same directory and replaces the object's file when it completes, so readers never see a
partial object. ``"xb"`` is honoured (an existing object makes the open or the completion fail).

The test session registers it in its own process with `fsspec.register_implementation` and, for other processes,
copies this file into a directory with a ``*.dist-info`` that declares an ``fsspec.specs`` entry point, as an
installed third-party package would (see conftest.py). Only fsspec and the standard library may be imported here.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from typing import Any
from urllib.parse import quote, unquote

from fsspec import AbstractFileSystem
from fsspec.spec import AbstractBufferedFile

PROTOCOL = "userfs"
_OBJECT = "o~"
_UPLOAD = "u~"


class UserFileSystem(AbstractFileSystem):  # type: ignore[misc]
    protocol = PROTOCOL
    root_marker = ""

    def __init__(self, store: str, **kwargs: Any) -> None:
        super().__init__(store=store, **kwargs)
        self.store = store

    @classmethod
    def _strip_protocol(cls, path: Any) -> str:
        text = str(path)
        if text.startswith(f"{PROTOCOL}://"):
            text = text[len(PROTOCOL) + 3 :]
        return text.strip("/")

    # -- the store's own layout --------------------------------------------------------------------------------
    def _file(self, path: str) -> str:
        return os.path.join(self.store, _OBJECT + quote(self._strip_protocol(path), safe=""))

    def _objects(self) -> dict[str, os.stat_result]:
        found = {}
        with os.scandir(self.store) as entries:
            for entry in entries:
                if entry.name.startswith(_OBJECT):
                    try:
                        found[unquote(entry.name[len(_OBJECT) :])] = entry.stat()
                    except FileNotFoundError:
                        continue  # deleted meanwhile
        return found

    @staticmethod
    def _entry(name: str, st: os.stat_result | None) -> dict[str, Any]:
        if st is None:
            return {"name": name, "size": 0, "type": "directory"}
        return {"name": name, "size": st.st_size, "type": "file", "mtime": st.st_mtime}

    # -- the template's methods --------------------------------------------------------------------------------
    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        objects = self._objects()
        if path in objects:
            out = [self._entry(path, objects[path])]
        else:
            prefix = f"{path}/" if path else ""
            children: dict[str, dict[str, Any]] = {}
            for name, st in objects.items():
                if name.startswith(prefix):
                    head, sep, _ = name[len(prefix) :].partition("/")
                    child = prefix + head
                    children[child] = self._entry(child, None if sep else st)
            if not children and path:
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
            out = [children[k] for k in sorted(children)]
        return out if detail else [e["name"] for e in out]

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: Any = None,
        autocommit: bool = True,
        cache_options: Any = None,
        **kwargs: Any,
    ) -> UserFile:
        path = self._strip_protocol(path)
        if "x" in mode and os.path.exists(self._file(path)):
            raise FileExistsError(errno.EEXIST, "File exists", path)
        return UserFile(
            self,
            path,
            mode=mode,
            block_size=block_size or "default",
            autocommit=autocommit,
            cache_options=cache_options,
            **kwargs,
        )

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        with open(self._file(path1), "rb") as src:
            data = src.read()
        tmp = os.path.join(self.store, _UPLOAD + secrets.token_hex(8))
        with open(tmp, "wb") as dst:
            dst.write(data)
        os.replace(tmp, self._file(path2))

    def _rm(self, path: str) -> None:
        # Like an object store's DELETE: removing what is not there (or an implicit directory) is not an error.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._file(path))


class UserFile(AbstractBufferedFile):  # type: ignore[misc]
    fs: UserFileSystem

    def _initiate_upload(self) -> None:
        self._upload = os.path.join(self.fs.store, _UPLOAD + secrets.token_hex(8))
        with open(self._upload, "xb"):
            pass

    def _upload_chunk(self, final: bool = False) -> bool:
        with open(self._upload, "ab") as f:
            f.write(self.buffer.getvalue())
        if final:
            target = self.fs._file(self.path)
            if "x" in self.mode:
                try:
                    os.link(self._upload, target)
                except FileExistsError:
                    os.unlink(self._upload)
                    raise
                os.unlink(self._upload)
            else:
                os.replace(self._upload, target)
        return True

    def _fetch_range(self, start: int, end: int) -> bytes:
        with open(self.fs._file(self.path), "rb") as f:
            f.seek(start)
            return f.read(max(0, end - start))
