"""Writers for filesystems that keep objects whole: memory (one call at commit) and the object stores (one
conditional PUT, or an upload that completes only on commit). Each is handed a `Target`, never the repository."""

from __future__ import annotations

import base64
import contextlib
import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from .._objects import HashingWriter, StoredObject
from ..errors import AlreadyExists, PgRecoveryError, StorageError
from ._drivers import CHUNK, MAX_PARTS, Capabilities
from ._retry import Retry, is_transient

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem


@attrs.frozen(kw_only=True, eq=False)
class Target:
    """What a writer on a remote filesystem is handed: where the object goes, and the few things it needs from
    the repository (its retries, its part size, and how to look at what the key holds now)."""

    key: str
    path: str
    fs: AbstractFileSystem
    overwrite: bool
    retry: Retry
    part_size: int
    capabilities: Capabilities
    exists: Callable[[], bool]  # whether the key holds an object now
    stored_digest: Callable[[], tuple[int, str]]  # (size, sha256) of the bytes stored under the key, as stored


class BufferWriter(HashingWriter):
    """For in-memory filesystems: the object is stored in one call at commit."""

    def __init__(self, key: str, fs: AbstractFileSystem, path: str, overwrite: bool) -> None:
        super().__init__(key)
        self._fs, self._path, self._parts, self._overwrite = fs, path, list[bytes](), overwrite

    def _write_raw(self, data: bytes | bytearray | memoryview) -> None:
        self._parts.append(bytes(data))

    def commit(self) -> StoredObject:
        try:  # "create" refuses a name that another writer took meanwhile
            self._fs.pipe_file(self._path, b"".join(self._parts), mode="overwrite" if self._overwrite else "create")
        except FileExistsError:
            self.abort()
            raise AlreadyExists(f"refusing to overwrite {self.key!r}: it appeared in memory during the write") from None
        self._parts.clear()
        return self._result()

    def abort(self) -> None:
        self._done = True
        self._parts.clear()


class UploadWriter(HashingWriter):
    """Object stores: one conditional PUT for a small object, a multipart/resumable/block upload for a large one.

    Bytes are buffered until they reach the repository's part size. If the writer is committed before that, the
    object goes in a single request (retried as a whole on a transient error: the data is still here). Otherwise
    the driver's upload starts and takes the bytes as they come; parts grow after `MAX_PARTS` / 10 of them so
    that S3's part limit is never reached. Nothing is visible under the key before `commit` completes the upload;
    `abort` (or an error) cancels it.
    """

    def __init__(self, target: Target) -> None:
        super().__init__(target.key)
        self._t = target
        self._conditional = target.capabilities.conditional and not target.overwrite
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._file: Any = None
        self._sent = 0
        # the failure of the upload, raised again by any later write or commit: a caller that writes on while it
        # handles the error (tarfile closing its stream) would otherwise replace it with what the driver's broken
        # file says then ("File not in write mode", a BufferError), and the real cause would go unreported
        self._failed: StorageError | None = None
        # where the store keeps an MD5 of the whole object (GCS), a large upload is checked against it after
        # completion (a chunk sent again after a lost answer must not land in the wrong place)
        self._md5 = hashlib.md5(usedforsecurity=False) if target.capabilities.stored_md5 else None

    # -- writing -------------------------------------------------------------------------------------------
    def _write_raw(self, data: bytes | bytearray | memoryview) -> None:
        if self._failed is not None:
            raise self._failed
        if self._file is None:
            self._buffer.append(bytes(data))
            self._buffered += len(data)
            if self._buffered >= self._t.part_size:
                self._start_upload()
        else:
            self._feed(data)

    def _start_upload(self) -> None:
        mode = "xb" if self._conditional else "wb"
        t = self._t
        self._file = t.retry(
            "start an upload of", self.key, lambda: open_uncommitted(t.fs, t.path, mode, block_size=t.part_size)
        )
        data = b"".join(self._buffer)
        self._buffer.clear()
        self._buffered = 0
        self._feed(data)

    def _feed(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        try:
            for start in range(0, len(view), CHUNK):
                piece = view[start : start + CHUNK]
                self._file.write(piece)
                self._sent += len(piece)
                if self._md5 is not None:
                    self._md5.update(piece)
                # Parts of part_size up to a tenth of S3's part limit, then each part 1/1000 of what was sent:
                # 1,000 + 1,000 * ln(size / (1,000 * part_size)) parts, fewer than 10,000 up to 5 TiB.
                self._file.blocksize = max(self._t.part_size, self._sent // (MAX_PARTS // 10))
        except Exception as e:
            self._failed = self._t.retry.failure("upload", self.key, e)
            raise self._failed from e

    # -- completing ----------------------------------------------------------------------------------------
    def commit(self) -> StoredObject:
        if self._done:
            raise StorageError(f"write of {self.key!r} was already finished")
        if self._failed is not None:
            self.abort()
            raise self._failed
        try:
            if self._file is None:
                self._put_whole()
            else:
                self._complete_upload()
        except BaseException:
            self.abort()
            raise
        return self._result()

    def _put_whole(self) -> None:
        data = b"".join(self._buffer)
        mode = "create" if self._conditional else "overwrite"
        fs, path = self._t.fs, self._t.path

        def put() -> None:  # s3fs, gcsfs and adlfs take mode= (create: If-None-Match / ifGenerationMatch=0)
            fs.pipe_file(path, data, mode=mode)

        try:
            self._t.retry("store", self.key, put, confirm=self._landed)
        except AlreadyExists:
            if self._t.capabilities.finish != "close" or self._t.exists():
                raise
            # Azure: blocks staged by an aborted upload of this name make an "uncommitted blob", which Put Blob's
            # If-None-Match counts as existing (Azurite does) while nothing is visible. Committing a block list
            # under the same condition is not refused: go that way.
            self._start_upload()
            self._complete_upload()
        self._buffer.clear()

    def _complete_upload(self) -> None:
        f = self._file
        try:
            f.close()  # S3: the last part; GCS: all but the final chunk; Azure: the block list (the commit)
        except FileExistsError:
            raise self._t.retry.conflict(self.key) from None
        except Exception as e:
            if not (is_transient(e) and self._landed()):
                raise self._t.retry.failure("upload", self.key, e) from e
        if self._t.capabilities.finish == "commit":
            self._t.retry("complete the upload of", self.key, f.commit, confirm=self._landed)
        self._file = None
        self._check_stored_md5()

    def _check_stored_md5(self) -> None:
        """Where the store keeps an MD5 (``capabilities.stored_md5``): the completed object's must be that of the
        bytes sent; otherwise the object (ours: the write was conditional or ours to replace) is removed and the
        write fails, to be retried whole."""
        if self._md5 is None:
            return
        t = self._t
        with contextlib.suppress(Exception):
            t.fs.invalidate_cache(t.path)
        stored = t.retry("check", self.key, lambda: t.fs.info(t.path)).get(t.capabilities.stored_md5)
        if not stored or base64.b64decode(stored) == self._md5.digest():
            return  # a composite object has no MD5: nothing to compare
        with contextlib.suppress(Exception):
            t.retry("delete", self.key, lambda: t.fs.rm_file(t.path))
        raise StorageError(
            f"the store kept other bytes than were sent for {self.key!r} ({self._sent} bytes, MD5 mismatch after "
            "the upload completed): the object was removed; write it again"
        )

    def _landed(self) -> bool:
        """After a lost answer: is exactly what we wrote stored under the key (our own attempt succeeded)?"""
        try:
            with contextlib.suppress(Exception):
                self._t.fs.invalidate_cache(self._t.path)
            return self._t.stored_digest() == (self._size, self._hash.hexdigest())
        except PgRecoveryError:
            return False

    def abort(self) -> None:
        self._done = True
        self._buffer.clear()
        if self._file is not None:
            cancel(self._file)
            self._file = None

    def __del__(self) -> None:
        # Dropped without commit or abort: the driver's own finaliser would close its file, and adlfs completes an
        # upload on close. Neuter it here, without network calls (a finaliser must not block); the unfinished
        # upload stays invisible (see docs/repository.md for how each store eventually drops it).
        f = getattr(self, "_file", None)
        if f is not None and not getattr(self, "_done", True):
            with contextlib.suppress(Exception):
                f.forced = True
                f.closed = True


def cancel(f: Any) -> None:
    """Cancel a driver's upload without completing it (and without letting its finaliser complete it later)."""
    with contextlib.suppress(Exception):
        f.discard()  # S3: abort the multipart upload; GCS: cancel the resumable session; Azure: nothing
    # close() of an un-forced file flushes, and adlfs commits its blocks on that flush: mark it forced first.
    with contextlib.suppress(Exception):
        f.forced = True
        f.close()
    with contextlib.suppress(Exception):
        f.closed = True


def target_exists(e: BaseException | None) -> bool:
    """Whether a driver's error says the destination exists (``FileExistsError``, or a class named so: webdav4's
    ``ResourceAlreadyExists``), recognised without importing the driver."""
    return e is not None and (
        isinstance(e, FileExistsError) or any("AlreadyExists" in c.__name__ for c in type(e).__mro__)
    )


def open_uncommitted(fs: AbstractFileSystem, path: str, mode: str, **kwargs: Any) -> Any:
    """``fs.open(path, mode, autocommit=False)``: a driver file whose upload completes only on ``commit()``.

    fsspec's `open` also files such a file into ``fs.transaction``, a process-wide queue that nothing would empty
    (and that a ``with fs.transaction`` elsewhere would commit): take it out again, since we commit it ourselves.
    """
    f = fs.open(path, mode, autocommit=False, **kwargs)
    with contextlib.suppress(Exception):
        fs.transaction.files.remove(f)
    return f
