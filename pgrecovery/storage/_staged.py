"""The writer for filesystems pgrecovery knows nothing about: staged under a temporary name, published, then
confirmed by reading the storage back."""

from __future__ import annotations

import contextlib
import hashlib
import secrets
from typing import Any

from .._objects import HashingWriter, StoredObject
from ..errors import AlreadyExists, NotStored, PgRecoveryError, StorageError
from ._drivers import CHUNK
from ._writers import Target, cancel, target_exists


class StagedWriter(HashingWriter):
    """Any filesystem pgrecovery knows nothing about: staged, published, then confirmed from the storage itself.

    Bytes go through the filesystem's public ``open()`` to a hidden temporary name beside the target
    (``.<name>.<hex>.tmp``, which listings skip), so an interrupted write never shows under the key. On commit the
    staged object must be seen with the size written (and, up to the repository's part size, read back with the
    same sha256) before it is published with ``mv`` (or, where the filesystem cannot move, copied and the copy
    checked the same way); then the key itself must be seen with that size. Any shortfall is `NotStored`: a
    filesystem that drops or damages a write is never reported as having stored it. Without ``overwrite`` an
    existing key is refused when the writer starts and again just before publishing (not atomically: unknown
    filesystems offer no conditional write).
    """

    def __init__(self, target: Target) -> None:
        """Start the write (the directory of ``target.path`` exists already where the filesystem needs one)."""
        super().__init__(target.key)
        self._t = target
        self._path, self._overwrite = target.path, target.overwrite
        directory, _, name = target.path.rpartition("/")
        self._tmp = f"{directory}/.{name}.{secrets.token_hex(4)}.tmp" if directory else f".{name}.tmp"
        self._file: Any = target.retry("start a write of", self.key, lambda: target.fs.open(self._tmp, "wb"))

    def _write_raw(self, data: bytes | bytearray | memoryview) -> None:
        try:
            self._file.write(data)
        except Exception as e:
            raise self._t.retry.failure("write", self.key, e) from e

    def commit(self) -> StoredObject:
        if self._done:
            raise StorageError(f"write of {self.key!r} was already finished")
        t = self._t
        try:
            f, self._file = self._file, None
            try:
                f.close()
            except Exception as e:
                raise t.retry.failure("write", self.key, e) from e
            self._confirm(self._tmp, read_back=True)
            if not self._overwrite and t.exists():
                raise t.retry.conflict(self.key)
            try:
                self._move_into_place()
            except StorageError as e:
                if not isinstance(e.__cause__, NotImplementedError):
                    raise
                self._copy_into_place()
            self._confirm(self._path, read_back=False)
        except BaseException:
            self.abort()
            raise
        self._remove_tmp()  # a move that copied leaves it behind
        return self._result()

    def _move_into_place(self) -> None:
        """``mv`` the staged object under its key. Where the filesystem's move refuses an existing target (WebDAV's
        COPY with ``Overwrite: F``), an overwrite removes the old object first; a refusal otherwise means the key
        was taken meanwhile."""
        retry, fs = self._t.retry, self._t.fs

        def move() -> None:
            fs.mv(self._tmp, self._path)

        try:
            retry("publish", self.key, move, confirm=self._published)
        except (AlreadyExists, StorageError) as e:
            if not (isinstance(e, AlreadyExists) or target_exists(e.__cause__)):
                raise
            if not self._overwrite:
                raise retry.conflict(self.key) from None
            retry("replace", self.key, lambda: fs.rm_file(self._path))
            retry("publish", self.key, move, confirm=self._published)

    def _published(self) -> bool:
        """After a move whose answer was lost: did it happen (the key holds what was written)?"""
        try:
            self._confirm(self._path, read_back=True)
        except PgRecoveryError:
            return False
        return True

    def _copy_into_place(self) -> None:
        """For a filesystem that cannot move: copy the staged object under its key, and check the copy.

        A copy that fails part way is removed: closing a half-written file would publish it on many filesystems,
        and a WAL object under its final name counts as archived.
        """
        retry, fs = self._t.retry, self._t.fs

        def copy() -> None:
            dst = fs.open(self._path, "wb")
            try:
                with fs.open(self._tmp, "rb") as src:
                    while data := src.read(CHUNK):
                        dst.write(data)
            except BaseException:
                cancel(dst)
                self._remove_final()
                raise
            dst.close()

        try:
            retry("publish", self.key, copy)
            self._confirm(self._path, read_back=True)
        except BaseException:
            self._remove_final()
            raise

    def _remove_final(self) -> None:
        """Take back a failed copy under the key (checked free before it started); say so if that fails too."""
        t = self._t
        try:
            t.retry("remove the failed copy of", self.key, lambda: t.fs.rm_file(self._path))
        except FileNotFoundError:
            return
        except StorageError as e:
            raise NotStored(
                f"a copy of {self.key!r} failed part way and could not be removed ({e}): delete that object "
                "before anything reads it"
            ) from None

    def _confirm(self, path: str, *, read_back: bool) -> None:
        """Raise `NotStored` unless ``path`` is stored with what was written."""
        t = self._t
        with contextlib.suppress(Exception):
            t.fs.invalidate_cache(path)
        where = f"{self.key!r} in {t.retry.where}"
        try:
            info = t.retry("check", self.key, lambda: t.fs.info(path))
        except FileNotFoundError:
            raise NotStored(
                f"{where} is missing after a write that raised no error: the filesystem dropped it"
            ) from None
        size = info.get("size") if isinstance(info, dict) else None
        if not isinstance(size, int):
            raise NotStored(f"{where}: the filesystem does not report the size of what it stored, so the write "
                            "cannot be confirmed")  # fmt: skip
        if size != self._size:
            raise NotStored(f"{where} holds {size} bytes after a write of {self._size}: the filesystem lost data")
        if read_back and self._size <= t.part_size:
            try:
                stored = t.retry("read back", self.key, lambda: t.fs.cat_file(path))
            except FileNotFoundError:
                raise NotStored(f"{where} cannot be read back after its write") from None
            if hashlib.sha256(stored).hexdigest() != self._hash.hexdigest():
                raise NotStored(f"{where} reads back other bytes than were written: the filesystem damaged them")

    def _remove_tmp(self) -> None:
        with contextlib.suppress(Exception):
            if self._t.fs.exists(self._tmp):
                self._t.fs.rm_file(self._tmp)

    def abort(self) -> None:
        self._done = True
        if self._file is not None:
            with contextlib.suppress(Exception):
                self._file.close()
            self._file = None
        self._remove_tmp()
