"""`Storage`: the objects of a repository, on any filesystem fsspec reaches (`pgrecovery.Repository` adds the
backups on top of it).

This module is the only one that talks to fsspec. It knows each protocol's quirks through a small capability
table and offers writes that state their guarantee: an object is visible under its final name only once it is
complete and (on local disk) durable, and nothing is overwritten unless the caller says so.

What each object store does (read from s3fs, gcsfs and adlfs, proven against their emulators in tests/storage):

* S3 (s3fs): a small object is one PutObject; a large one a multipart upload that s3fs completes only in
  ``commit()`` (``close()`` uploads the last part); ``discard()`` aborts it. With ``mode="create"`` / ``"xb"``
  both carry ``If-None-Match: *``, so a write never replaces an object that appeared meanwhile.
* Google Cloud Storage (gcsfs): one request for a small object; a resumable upload for a large one, finalised
  only by ``commit()``; ``discard()`` cancels the session. ``ifGenerationMatch=0`` makes both conditional.
* Azure Blob (adlfs): blocks are staged as the file fills, and the block list is committed by ``close()`` (adlfs
  ignores ``autocommit``; its ``commit()``/``discard()`` do nothing). So the writer closes the file only to commit,
  and an aborted write is closed without its final flush: the staged blocks never become a blob.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import logging
import os
import random
import secrets
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final, Literal, TypeVar
from urllib.parse import urlsplit

import attrs

from .._fsutil import fsync_dir, makedirs_durable
from .._objects import HashingWriter, ObjectWriter, StoredObject
from .._redact import redact_url, scrub, secret_values
from ..errors import (
    AlreadyExists,
    ConfigurationError,
    MissingDependency,
    NotStored,
    PgRecoveryError,
    StorageError,
)

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

    from ..crypto import EncryptionKey

log = logging.getLogger(__package__)  # one logger per area, whichever module of it logs

CHUNK: Final = 1 << 20
PART_SIZE: Final = 8 << 20  # upload part (S3) / block (Azure) / resumable chunk (GCS) size for large objects
MIN_PART_SIZE: Final = 5 << 20  # S3's minimum part size
MAX_PARTS: Final = 10_000  # S3's maximum part count: parts grow so that no object needs more
_T = TypeVar("_T")

# Which extra provides which protocol (for the "install this" message).
PROVIDER_EXTRAS: Final[dict[str, str]] = {
    "s3": "s3",
    "s3a": "s3",
    "gs": "gcs",
    "gcs": "gcs",
    "az": "azure",
    "abfs": "azure",
    "abfss": "azure",
    "adl": "azure",
}

# -- capabilities ------------------------------------------------------------------------------------------------

Finish = Literal["commit", "close"]


@attrs.frozen(kw_only=True)
class Capabilities:
    """What a protocol guarantees, so that writes can be made safe on each one.

    ``local``: a POSIX filesystem on this host (temp file + fsync + link/rename + fsync of the directory).
    ``object_store``: an upload becomes visible only when completed; ``finish`` says which call completes it on
    the driver's file object (``commit`` for s3fs and gcsfs, ``close`` for adlfs). ``conditional``: a write can be
    made conditional on the name being free (``mode="create"``/``"xb"``), closing the race of exists-then-write.
    ``staged``: nothing is known of the filesystem; a write goes to a hidden temporary name, is published under
    its own name, and is reported stored only once the storage shows it there with the size written (and the
    digest, read back, up to the repository's part size).
    """

    local: bool = False
    object_store: bool = False
    finish: Finish = "commit"
    conditional: bool = False
    staged: bool = False


_LOCAL = Capabilities(local=True)
_MEMORY = Capabilities()
_S3 = Capabilities(object_store=True, finish="commit", conditional=True)
_GCS = Capabilities(object_store=True, finish="commit", conditional=True)
_AZURE = Capabilities(object_store=True, finish="close", conditional=True)
# Any other filesystem: writes staged under a temporary name, published, then confirmed by reading the storage back
# (see `_StagedWriter`). Nothing is assumed of it that fsspec's public API does not promise.
_OTHER = Capabilities(staged=True)

# protocol -> (capabilities, the package whose implementation those were proven with)
_CAPS: Final[dict[str, tuple[Capabilities, str]]] = {
    "file": (_LOCAL, "fsspec.implementations.local"),
    "local": (_LOCAL, "fsspec.implementations.local"),
    "memory": (_MEMORY, "fsspec.implementations.memory"),
    "s3": (_S3, "s3fs"),
    "s3a": (_S3, "s3fs"),
    "gs": (_GCS, "gcsfs"),
    "gcs": (_GCS, "gcsfs"),
    "az": (_AZURE, "adlfs"),
    "abfs": (_AZURE, "adlfs"),
    "abfss": (_AZURE, "adlfs"),
}
# The methods whose behaviour the table describes: a subclass that overrides any of them elsewhere is not the
# implementation that was proven, and gets the safe default instead.
_PROVEN_METHODS: Final = ("open", "_open", "pipe_file", "info", "exists", "ls", "find", "rm_file")


def capabilities_of(fs: AbstractFileSystem) -> Capabilities:
    """The capabilities pgrecovery relies on for ``fs``: from the table when ``fs`` is one of the implementations
    it was proven with (or a subclass that changes none of the methods used), the safe default otherwise."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    entry = next((_CAPS[p] for p in protocols if p in _CAPS), None)
    if entry is None:
        return _OTHER
    caps, package = entry
    for name in _PROVEN_METHODS:
        owner = next((c for c in type(fs).__mro__ if name in vars(c)), None)
        module = getattr(owner, "__module__", "") or ""
        if not (module == package or module.startswith(package + ".") or module in ("fsspec.spec", "fsspec.asyn")):
            return _OTHER
    return caps


def _check_usable(fs: AbstractFileSystem) -> None:
    """Refuse, at `Repository` construction, a filesystem on which no write could ever be confirmed: one that can
    neither open files (fsspec's base class would hand back a file that stores nothing) nor describe them."""
    from fsspec import AbstractFileSystem as Base

    def own(name: str) -> bool:
        method = getattr(fs, name, None)  # through the instance: wrappers may delegate by attribute lookup
        return method is not None and getattr(method, "__func__", None) is not getattr(Base, name)

    name = type(fs).__name__
    if not (own("open") or own("_open")):
        raise ConfigurationError(
            f"filesystem {name} implements neither open() nor _open(): pgrecovery cannot write to it"
        )
    if not (own("info") or own("ls")):
        raise ConfigurationError(
            f"filesystem {name} implements neither info() nor ls(): pgrecovery could not confirm that a write "
            "was stored, so it refuses to use it"
        )


_CACHED_LISTINGS: Final = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})

# -- retries -----------------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How often and how patiently a storage operation is retried after a transient error.

    At most ``attempts`` tries; before try *n* (n >= 2) a pause of ``base_delay * 2**(n-2)`` seconds, capped at
    ``max_delay``, of which a random half is jitter (so that parallel workers do not retry in step). The drivers
    retry single requests themselves; this policy wraps whole operations (a listing, an existence check, a read, a
    delete, the completion of an upload) and only errors that `is_transient` accepts.
    """

    attempts: int = attrs.field(default=5, validator=attrs.validators.ge(1))
    base_delay: float = attrs.field(default=0.25, validator=attrs.validators.ge(0))
    max_delay: float = attrs.field(default=8.0, validator=attrs.validators.ge(0))

    def delay(self, attempt: int) -> float:
        """The pause before try ``attempt + 1`` (``attempt`` counts from 1)."""
        step = min(self.max_delay, self.base_delay * float(2 ** (attempt - 1)))
        return step / 2 + random.uniform(0, step / 2)  # noqa: S311 - jitter, not cryptography


# errno values that drivers use for throttling, busy servers and broken connections (s3fs maps SlowDown, 503 and
# 409 to EBUSY and 500 to EREMOTEIO).
_TRANSIENT_ERRNO: Final = frozenset(
    {
        errno.EAGAIN,
        errno.EBUSY,
        errno.ETIMEDOUT,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.ECONNREFUSED,
        errno.EPIPE,
        errno.ENETUNREACH,
        errno.EHOSTUNREACH,
        getattr(errno, "EREMOTEIO", 121),
    }
)
_TRANSIENT_STATUS: Final = frozenset({408, 429, 500, 502, 503, 504})
# Connection-level exception classes of the drivers' HTTP stacks, by name (importing them would load the drivers).
_TRANSIENT_NAMES: Final = frozenset(
    {
        # aiohttp (s3fs, gcsfs, adlfs)
        "ClientConnectionError",
        "ClientOSError",
        "ClientPayloadError",
        "ServerDisconnectedError",
        "ServerTimeoutError",
        "ClientConnectorError",
        # botocore (s3fs)
        "EndpointConnectionError",
        "ConnectionClosedError",
        "ReadTimeoutError",
        "ConnectTimeoutError",
        "ResponseStreamingError",
        # azure-core (adlfs)
        "ServiceRequestError",
        "ServiceResponseError",
        "IncompleteReadError",
        # google-auth / requests (gcsfs)
        "TransportError",
        "ChunkedEncodingError",
    }
)
_PERMANENT: Final = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is worth retrying: throttling, a 5xx answer, a dropped connection.

    Missing objects, refusals (permission, precondition) and pgrecovery's own errors are never transient.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 8:
        seen.add(id(current))
        if isinstance(current, PgRecoveryError) or isinstance(current, _PERMANENT):  # noqa: SIM101
            return False
        if isinstance(current, ConnectionError | TimeoutError):
            return True
        if isinstance(current, OSError) and current.errno in _TRANSIENT_ERRNO:
            return True
        if any(cls.__name__ in _TRANSIENT_NAMES for cls in type(current).__mro__):
            return True
        for attr in ("status_code", "status", "code"):
            value = getattr(current, attr, None)
            if isinstance(value, int) and not isinstance(value, bool) and value in _TRANSIENT_STATUS:
                return True
        current = current.__cause__ or current.__context__
    return False


# -- writers -----------------------------------------------------------------------------------------------------


class _LocalWriter(HashingWriter):
    """Temp file beside the target, fsync, hard link (no clobber) or rename, fsync of the directory."""

    def __init__(self, key: str, path: str, overwrite: bool) -> None:
        super().__init__(key)
        self._path = path
        self._overwrite = overwrite
        directory = os.path.dirname(path)
        makedirs_durable(directory)
        self._tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
        if not overwrite and os.path.lexists(path):
            raise AlreadyExists(f"refusing to overwrite {key!r}: it is already in the repository")
        self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)

    def _write_raw(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError as e:
            raise StorageError(f"cannot write {self.key!r}: {_reason(e)}") from e

    def commit(self) -> StoredObject:
        try:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
            if self._overwrite:
                os.replace(self._tmp, self._path)
            else:
                try:
                    os.link(self._tmp, self._path)  # fails if the target exists: no silent overwrite
                except FileExistsError:
                    raise AlreadyExists(
                        f"refusing to overwrite {self.key!r}: it appeared in the repository during the write"
                    ) from None
                os.unlink(self._tmp)
            fsync_dir(os.path.dirname(self._path))
        except BaseException as e:
            self.abort()
            if isinstance(e, OSError):  # the directory vanished (removed meanwhile), no space, no permission
                raise StorageError(f"cannot store {self.key!r}: {_reason(e)}") from e
            raise
        return self._result()

    def abort(self) -> None:
        self._done = True
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)


class _BufferWriter(HashingWriter):
    """For in-memory filesystems: the object is stored in one call at commit."""

    def __init__(self, key: str, fs: AbstractFileSystem, path: str, overwrite: bool) -> None:
        super().__init__(key)
        self._fs, self._path, self._parts, self._overwrite = fs, path, list[bytes](), overwrite

    def _write_raw(self, data: bytes) -> None:
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


class _ObjectWriter(HashingWriter):
    """Object stores: one conditional PUT for a small object, a multipart/resumable/block upload for a large one.

    Bytes are buffered until they reach the repository's part size. If the writer is committed before that, the
    object goes in a single request (retried as a whole on a transient error: the data is still here). Otherwise
    the driver's upload starts and takes the bytes as they come; parts grow after `MAX_PARTS` / 10 of them so
    that S3's part limit is never reached. Nothing is visible under the key before `commit` completes the upload;
    `abort` (or an error) cancels it.
    """

    def __init__(self, key: str, repo: Storage, path: str, overwrite: bool) -> None:
        super().__init__(key)
        self._repo, self._path, self._overwrite = repo, path, overwrite
        self._conditional = repo.capabilities.conditional and not overwrite
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._file: Any = None
        self._sent = 0

    # -- writing -------------------------------------------------------------------------------------------
    def _write_raw(self, data: bytes) -> None:
        if self._file is None:
            self._buffer.append(bytes(data))
            self._buffered += len(data)
            if self._buffered >= self._repo.part_size:
                self._start_upload()
        else:
            self._feed(data)

    def _start_upload(self) -> None:
        mode = "xb" if self._conditional else "wb"
        fs, path, part = self._repo.fs, self._path, self._repo.part_size
        self._file = self._repo._retry(
            "start an upload of", self.key, lambda: _open_uncommitted(fs, path, mode, block_size=part)
        )
        data = b"".join(self._buffer)
        self._buffer.clear()
        self._buffered = 0
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            for start in range(0, len(view), CHUNK):
                piece = view[start : start + CHUNK]
                self._file.write(piece)
                self._sent += len(piece)
                # Parts of part_size up to a tenth of S3's part limit, then each part 1/1000 of what was sent:
                # 1,000 + 1,000 * ln(size / (1,000 * part_size)) parts, fewer than 10,000 up to 5 TiB.
                self._file.blocksize = max(self._repo.part_size, self._sent // (MAX_PARTS // 10))
        except Exception as e:
            raise self._repo._failure("upload", self.key, e) from e

    # -- completing ----------------------------------------------------------------------------------------
    def commit(self) -> StoredObject:
        if self._done:
            raise StorageError(f"write of {self.key!r} was already finished")
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
        fs, path = self._repo.fs, self._path

        def put() -> None:  # s3fs, gcsfs and adlfs take mode= (create: If-None-Match / ifGenerationMatch=0)
            fs.pipe_file(path, data, mode=mode)

        try:
            self._repo._retry("store", self.key, put, confirm=self._landed)
        except AlreadyExists:
            if self._repo.capabilities.finish != "close" or self._repo.exists(self.key):
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
            raise AlreadyExists(
                f"refusing to overwrite {self.key!r}: it appeared in {self._repo.display_url} during the write"
            ) from None
        except Exception as e:
            if not (is_transient(e) and self._landed()):
                raise self._repo._failure("upload", self.key, e) from e
        if self._repo.capabilities.finish == "commit":
            self._repo._retry("complete the upload of", self.key, f.commit, confirm=self._landed)
        self._file = None

    def _landed(self) -> bool:
        """After a lost answer: is exactly what we wrote stored under the key (our own attempt succeeded)?"""
        try:
            with contextlib.suppress(Exception):
                self._repo.fs.invalidate_cache(self._path)
            return self._repo._stored_digest(self.key) == (self._size, self._hash.hexdigest())
        except PgRecoveryError:
            return False

    def abort(self) -> None:
        self._done = True
        self._buffer.clear()
        if self._file is not None:
            _cancel(self._file)
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


def _cancel(f: Any) -> None:
    """Cancel a driver's upload without completing it (and without letting its finaliser complete it later)."""
    with contextlib.suppress(Exception):
        f.discard()  # S3: abort the multipart upload; GCS: cancel the resumable session; Azure: nothing
    # close() of an un-forced file flushes, and adlfs commits its blocks on that flush: mark it forced first.
    with contextlib.suppress(Exception):
        f.forced = True
        f.close()
    with contextlib.suppress(Exception):
        f.closed = True


def _target_exists(e: BaseException | None) -> bool:
    """Whether a driver's error says the destination exists (``FileExistsError``, or a class named so: webdav4's
    ``ResourceAlreadyExists``), recognised without importing the driver."""
    return e is not None and (
        isinstance(e, FileExistsError) or any("AlreadyExists" in c.__name__ for c in type(e).__mro__)
    )


def _open_uncommitted(fs: AbstractFileSystem, path: str, mode: str, **kwargs: Any) -> Any:
    """``fs.open(path, mode, autocommit=False)``: a driver file whose upload completes only on ``commit()``.

    fsspec's `open` also files such a file into ``fs.transaction``, a process-wide queue that nothing would empty
    (and that a ``with fs.transaction`` elsewhere would commit): take it out again, since we commit it ourselves.
    """
    f = fs.open(path, mode, autocommit=False, **kwargs)
    with contextlib.suppress(Exception):
        fs.transaction.files.remove(f)
    return f


class _StagedWriter(HashingWriter):
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

    def __init__(self, key: str, repo: Storage, path: str, overwrite: bool) -> None:
        super().__init__(key)
        self._repo, self._path, self._overwrite = repo, path, overwrite
        directory, _, name = path.rpartition("/")
        self._tmp = f"{directory}/.{name}.{secrets.token_hex(4)}.tmp" if directory else f".{name}.tmp"
        repo._ensure_directory(directory)
        self._file: Any = repo._retry("start a write of", key, lambda: repo.fs.open(self._tmp, "wb"))

    def _write_raw(self, data: bytes) -> None:
        try:
            self._file.write(data)
        except Exception as e:
            raise self._repo._failure("write", self.key, e) from e

    def commit(self) -> StoredObject:
        if self._done:
            raise StorageError(f"write of {self.key!r} was already finished")
        repo = self._repo
        try:
            f, self._file = self._file, None
            try:
                f.close()
            except Exception as e:
                raise repo._failure("write", self.key, e) from e
            self._confirm(self._tmp, read_back=True)
            if not self._overwrite and repo.exists(self.key):
                raise AlreadyExists(
                    f"refusing to overwrite {self.key!r}: it appeared in {repo.display_url} during the write"
                )
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
        repo, fs = self._repo, self._repo.fs

        def move() -> None:
            fs.mv(self._tmp, self._path)

        try:
            repo._retry("publish", self.key, move, confirm=self._published)
        except (AlreadyExists, StorageError) as e:
            if not (isinstance(e, AlreadyExists) or _target_exists(e.__cause__)):
                raise
            if not self._overwrite:
                raise AlreadyExists(
                    f"refusing to overwrite {self.key!r}: it appeared in {repo.display_url} during the write"
                ) from None
            repo._retry("replace", self.key, lambda: fs.rm_file(self._path))
            repo._retry("publish", self.key, move, confirm=self._published)

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
        repo, fs = self._repo, self._repo.fs

        def copy() -> None:
            dst = fs.open(self._path, "wb")
            try:
                with fs.open(self._tmp, "rb") as src:
                    while data := src.read(CHUNK):
                        dst.write(data)
            except BaseException:
                _cancel(dst)
                self._remove_final()
                raise
            dst.close()

        try:
            repo._retry("publish", self.key, copy)
            self._confirm(self._path, read_back=True)
        except BaseException:
            self._remove_final()
            raise

    def _remove_final(self) -> None:
        """Take back a failed copy under the key (checked free before it started); say so if that fails too."""
        repo = self._repo
        try:
            repo._retry("remove the failed copy of", self.key, lambda: repo.fs.rm_file(self._path))
        except FileNotFoundError:
            return
        except StorageError as e:
            raise NotStored(
                f"a copy of {self.key!r} failed part way and could not be removed ({e}): delete that object "
                "before anything reads it"
            ) from None

    def _confirm(self, path: str, *, read_back: bool) -> None:
        """Raise `NotStored` unless ``path`` is stored with what was written."""
        repo = self._repo
        with contextlib.suppress(Exception):
            repo.fs.invalidate_cache(path)
        where = f"{self.key!r} in {repo.display_url}"
        try:
            info = repo._retry("check", self.key, lambda: repo.fs.info(path))
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
        if read_back and self._size <= repo.part_size:
            try:
                stored = repo._retry("read back", self.key, lambda: repo.fs.cat_file(path))
            except FileNotFoundError:
                raise NotStored(f"{where} cannot be read back after its write") from None
            if hashlib.sha256(stored).hexdigest() != self._hash.hexdigest():
                raise NotStored(f"{where} reads back other bytes than were written: the filesystem damaged them")

    def _remove_tmp(self) -> None:
        with contextlib.suppress(Exception):
            if self._repo.fs.exists(self._tmp):
                self._repo.fs.rm_file(self._tmp)

    def abort(self) -> None:
        self._done = True
        if self._file is not None:
            with contextlib.suppress(Exception):
                self._file.close()
            self._file = None
        self._remove_tmp()


# -- reading -----------------------------------------------------------------------------------------------------


class _RetryingReader(io.RawIOBase):
    """A driver's read-only file whose reads are retried on transient errors.

    fsspec's buffered files move their position only after a successful fetch, so a failed read can be repeated.
    """

    def __init__(self, f: Any, repo: Storage, key: str) -> None:
        super().__init__()
        self._f, self._repo, self._key = f, repo, key

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
        return bytes(self._repo._retry("read", self._key, lambda: self._f.read(n)))

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


# -- local durability helpers ------------------------------------------------------------------------------------


def _digest_stream(f: BinaryIO) -> tuple[int, str]:
    h, size = hashlib.sha256(), 0
    while data := f.read(4 * CHUNK):
        h.update(data)
        size += len(data)
    return size, h.hexdigest()


def _modified_of(info: dict[str, Any], key: str, where: str) -> datetime:
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


# -- the repository ----------------------------------------------------------------------------------------------


@attrs.define(init=False, repr=False, eq=False)
class Storage:
    """A place where backups and WAL live: a URL (plus fsspec storage options) or a filesystem and a root.

    >>> repo = Repository("file:///var/backups/pg")                            # doctest: +SKIP
    >>> repo = Repository("s3://bucket/prefix", endpoint_url="http://...")     # doctest: +SKIP
    >>> repo = Repository(fs=fsspec.filesystem("memory"), root="/r")           # doctest: +SKIP

    Storage options (keys, tokens) are passed to fsspec and never shown in ``repr``, logs, errors or manifests;
    they can also come from the environment (``FSSPEC_S3_KEY``, ``FSSPEC_GCS_TOKEN``, ... see docs/repository.md).
    ``retry_policy`` says how transient storage errors are retried; ``part_size`` is the upload part size for
    large objects on object stores (at least 5 MiB).

    Any fsspec filesystem works. The local filesystem, memory, s3fs, gcsfs and adlfs get writes built on what
    each is known to guarantee (see `Capabilities`); any other filesystem, including wrappers such as
    ``DirFileSystem`` and subclasses that override how files are opened, gets staged writes that are reported
    stored only once the storage shows them as written (`NotStored` otherwise). ``capabilities`` declares a
    wrapper's guarantees instead (say, an instrumented s3fs); declare only what the filesystem really does.
    """

    url: str
    fs: AbstractFileSystem
    root: str
    protocol: str
    capabilities: Capabilities
    retry_policy: RetryPolicy
    part_size: int
    encryption: EncryptionKey | None
    _secrets: tuple[str, ...]
    _directories: set[str]

    def __init__(
        self,
        url: str | None = None,
        *,
        fs: AbstractFileSystem | None = None,
        root: str | None = None,
        retry_policy: RetryPolicy | None = None,
        part_size: int = PART_SIZE,
        encryption: EncryptionKey | None = None,
        capabilities: Capabilities | None = None,
        **storage_options: Any,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ConfigurationError(f"part_size must be at least {MIN_PART_SIZE} bytes (5 MiB), not {part_size}")
        if fs is not None:
            if url is not None or storage_options:
                raise ConfigurationError("give either a URL (with storage options) or fs=, not both")
            from fsspec import AbstractFileSystem as Base

            if not isinstance(fs, Base):
                raise ConfigurationError(
                    f"fs= takes an fsspec filesystem (AbstractFileSystem), not {type(fs).__name__}"
                )
            fs, root_path = _unwrap_dir(fs, fs._strip_protocol(root or ""))
            protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
            self.url = f"{protocol}://{root_path.lstrip('/')}" if protocol != "file" else root_path
        else:
            if not url:
                raise ConfigurationError(
                    "no repository given: pass a URL such as file:///var/backups/pg or s3://bucket/prefix "
                    "(CLI: --repo URL or PGRECOVERY_REPO)"
                )
            fs, root_path = _unwrap_dir(*_open_fs(url, storage_options))
            protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
            self.url = url
        self.fs = fs
        self.protocol = protocol
        self.capabilities = capabilities or capabilities_of(fs)
        if self.capabilities.staged:
            _check_usable(fs)
        self.retry_policy = retry_policy or RetryPolicy()
        self.part_size = part_size
        self.encryption = encryption
        self._secrets = tuple(secret_values(dict(getattr(fs, "storage_options", {}) or {})))
        self._directories = set()
        if self.capabilities.local:
            root_path = os.path.abspath(root_path)
            if os.path.exists(root_path) and not os.path.isdir(root_path):
                raise ConfigurationError(f"repository path {root_path!r} exists and is not a directory")
        # A filesystem of relative paths (a DirFileSystem, say) has its top at "", not "/".
        self.root = root_path.rstrip("/") or ("" if self.capabilities.staged and not root_path else "/")

    def __repr__(self) -> str:
        key = f", encryption key id {self.encryption.key_id}" if self.encryption is not None else ""
        return f"{type(self).__name__}({redact_url(self.url)!r}{key})"

    def encryption_info(self) -> dict[str, str] | None:
        """What a manifest records about the repository's encryption: the cipher, the format and the key's id
        (never the key)."""
        if self.encryption is None:
            return None
        from ..crypto import VERSION

        return {"cipher": "aes-256-gcm", "format": str(VERSION), "key_id": self.encryption.key_id}

    @property
    def display_url(self) -> str:
        """The repository's URL with any credentials removed: safe to log and to put in JSON output."""
        return redact_url(self.url)

    # -- errors and retries --------------------------------------------------------------------------------
    def _reason(self, e: BaseException) -> str:
        return scrub(_reason(e), self._secrets)

    def _failure(self, what: str, key: str, e: BaseException, attempts: int = 1) -> StorageError:
        if isinstance(e, StorageError):
            return e
        tries = f" (after {attempts} attempts)" if attempts > 1 else ""
        return StorageError(f"cannot {what} {key!r} in {self.display_url}{tries}: {self._reason(e)}")

    def _retry(self, what: str, key: str, op: Callable[[], _T], *, confirm: Callable[[], bool] | None = None) -> _T:
        """``op()``, retried on transient errors; a lasting error becomes a `StorageError` naming key and repo.

        ``confirm`` (for writes): after a transient failure, a retry that meets "already exists" asks it whether
        the first attempt landed after all (its answer was lost) before calling that a conflict.
        ``FileNotFoundError`` passes through for the caller to interpret.
        """
        policy = self.retry_policy
        failed_before = False
        for attempt in range(1, policy.attempts + 1):
            try:
                return op()
            except PgRecoveryError:
                raise
            except FileNotFoundError as e:
                if confirm is None:
                    raise
                if failed_before and confirm():
                    return None  # type: ignore[return-value]  # writes return nothing of interest
                raise self._failure(what, key, e, attempt) from e
            except FileExistsError:
                if failed_before and confirm is not None and confirm():
                    return None  # type: ignore[return-value]
                raise AlreadyExists(
                    f"refusing to overwrite {key!r}: it appeared in {self.display_url} during the write"
                ) from None
            except Exception as e:
                if not is_transient(e) or attempt == policy.attempts:
                    raise self._failure(what, key, e, attempt) from e
                failed_before = True
                pause = policy.delay(attempt)
                log.info(
                    "%s %s in %s: %s; retrying in %.2f s (attempt %d of %d)",
                    what, key, self.display_url, self._reason(e), pause, attempt + 1, policy.attempts,
                )  # fmt: skip
                time.sleep(pause)
        raise AssertionError("unreachable")  # pragma: no cover

    def _ensure_directory(self, directory: str) -> None:
        """Make ``directory`` (and its parents) where a filesystem needs directories before files (SFTP, WebDAV, a
        local filesystem without auto_mkdir); remembered, so each costs one call per repository object."""
        if not directory or directory in self._directories:
            return
        try:
            self._retry("create the directory of", directory, lambda: self.fs.makedirs(directory, exist_ok=True))
        except StorageError as e:
            if not isinstance(e.__cause__, NotImplementedError):  # a filesystem without directories needs none
                raise
        self._directories.add(directory)

    def _fresh(self, path: str) -> None:
        """Drop the driver's cached listings: another process may have written since (archive_command does)."""
        if not self.capabilities.local:
            with contextlib.suppress(Exception):
                self.fs.invalidate_cache(path)

    # -- paths ---------------------------------------------------------------------------------------------
    def path(self, key: str) -> str:
        """The filesystem path of ``key`` (a relative POSIX path inside the repository)."""
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ConfigurationError(f"invalid repository key {key!r}")
        return f"{self.root.rstrip('/')}/{key}" if self.root else key

    def local_path(self, key: str) -> Path | None:
        """A local path to read ``key`` directly, when the repository is on this host's filesystem (and the object
        is stored as written: not in an encrypted repository)."""
        return Path(self.path(key)) if self.capabilities.local and self.encryption is None else None

    # -- writes --------------------------------------------------------------------------------------------
    def writer(self, key: str, *, overwrite: bool = False) -> ObjectWriter:
        """A streaming writer that hashes as it goes. Use as a context manager, or call commit()/abort().

        The object appears under ``key`` only when committed; on local disk it is fsynced (file and directory)
        first. With ``overwrite=False`` an existing object makes this (or, if it appears meanwhile, the commit)
        raise `AlreadyExists`. In an encrypted repository the bytes are encrypted on the way (see
        docs/encryption.md); the size and sha256 returned are those of what was written (the plaintext).
        """
        raw = self._raw_writer(key, overwrite=overwrite)
        if self.encryption is None:
            return raw
        from ..crypto import EncryptingWriter

        return EncryptingWriter(raw, self.encryption)

    def _raw_writer(self, key: str, *, overwrite: bool = False) -> ObjectWriter:
        path = self.path(key)
        try:
            if self.capabilities.local:
                return _LocalWriter(key, path, overwrite)
        except AlreadyExists:
            raise
        except OSError as e:
            raise StorageError(f"cannot write {key!r} in {self.display_url}: {self._reason(e)}") from e
        if not overwrite and self.exists(key):
            raise AlreadyExists(f"refusing to overwrite {key!r}: it is already in the repository")
        if self.capabilities.staged:
            return _StagedWriter(key, self, path, overwrite)
        if self.capabilities.object_store:
            return _ObjectWriter(key, self, path, overwrite)
        return _BufferWriter(key, self.fs, path, overwrite)

    def put_bytes(self, key: str, data: bytes, *, overwrite: bool = False) -> StoredObject:
        w = self.writer(key, overwrite=overwrite)
        try:
            w.write(data)
        except BaseException:
            w.abort()
            raise
        return w.commit()

    # -- reads ---------------------------------------------------------------------------------------------
    def open(self, key: str) -> BinaryIO:
        """A readable binary stream of ``key`` (on object stores: 8 MiB read-ahead, reads retried).

        In an encrypted repository every record is authenticated before any of its bytes is returned
        (`TamperedObject`, `WrongKey`); an object that is not encrypted there is refused, and an encrypted one
        read without a key names the key id it needs.
        """
        from ..crypto import open_decrypted

        return open_decrypted(self._open_raw(key), self.encryption, name=f"{key!r} in {self.display_url}")

    def _open_raw(self, key: str) -> BinaryIO:
        path = self.path(key)
        try:
            if self.capabilities.local:
                return open(path, "rb", buffering=CHUNK)
            self._fresh(path)
            f = self._retry(
                "read",
                key,
                lambda: self.fs.open(path, "rb", block_size=self.part_size, cache_type="readahead"),
            )
        except FileNotFoundError:
            raise StorageError(f"{key!r} is missing from {self.display_url}") from None
        except OSError as e:
            raise StorageError(f"cannot read {key!r} in {self.display_url}: {self._reason(e)}") from e
        return _RetryingReader(f, self, key)  # type: ignore[return-value]  # io.RawIOBase is a binary stream

    def read_bytes(self, key: str) -> bytes:
        with self.open(key) as f:
            return f.read()

    def iter_chunks(self, key: str, chunk: int = CHUNK) -> Iterator[bytes]:
        with self.open(key) as f:
            while data := f.read(chunk):
                yield data

    def digest(self, key: str) -> tuple[int, str]:
        """(size, sha256) of the bytes of ``key`` as written (decrypted and authenticated in an encrypted
        repository), read back from storage."""
        with self.open(key) as f:
            return _digest_stream(f)

    def _stored_digest(self, key: str) -> tuple[int, str]:
        """(size, sha256) of the bytes stored under ``key``, as they are (ciphertext when encrypted)."""
        with self._open_raw(key) as f:
            return _digest_stream(f)

    def exists(self, key: str) -> bool:
        path = self.path(key)
        try:
            if self.capabilities.local:
                return os.path.exists(path)
            self._fresh(path)
            return bool(self._retry("check", key, lambda: self.fs.exists(path)))
        except OSError as e:
            raise StorageError(f"cannot check {key!r} in {self.display_url}: {self._reason(e)}") from e

    def size(self, key: str) -> int:
        """The size of ``key`` as written (in an encrypted repository: the plaintext's, from the stored size)."""
        stored = self.stored_size(key)
        if self.encryption is None:
            return stored
        from ..crypto import plaintext_size

        return plaintext_size(stored)

    def modified(self, key: str) -> datetime:
        """When ``key`` was stored (its modification time on disk, its last-modified time on object stores)."""
        path = self.path(key)
        try:
            if self.capabilities.local:
                return datetime.fromtimestamp(os.path.getmtime(path), UTC)
            self._fresh(path)
            info = self._retry("check", key, lambda: self.fs.info(path))
        except FileNotFoundError:
            raise StorageError(f"{key!r} is missing from {self.display_url}") from None
        except OSError as e:
            raise StorageError(f"cannot check {key!r} in {self.display_url}: {self._reason(e)}") from e
        return _modified_of(info, key, self.display_url)

    def stored_size(self, key: str) -> int:
        """The number of bytes stored under ``key`` (ciphertext in an encrypted repository)."""
        path = self.path(key)
        try:
            if self.capabilities.local:
                return os.path.getsize(path)
            self._fresh(path)
            return int(self._retry("check", key, lambda: self.fs.size(path)))
        except FileNotFoundError:
            raise StorageError(f"{key!r} is missing from {self.display_url}") from None
        except OSError as e:
            raise StorageError(f"cannot check {key!r} in {self.display_url}: {self._reason(e)}") from e

    def list_keys(self, prefix: str = "") -> list[str]:
        """Every key below ``prefix`` (recursively), sorted. Temporary files of unfinished writes are skipped.

        Object store listings come in pages (1,000 keys on S3, 5,000 on Azure); the drivers follow them all.
        """
        base = self.path(prefix) if prefix else self.root
        try:
            if self.capabilities.local and not _local_dir(base):
                return []
            self._fresh(base)
            found = self._retry("list", prefix or "/", lambda: self.fs.find(base))
        except FileNotFoundError:
            return []
        except OSError as e:
            raise StorageError(f"cannot list {prefix or '/'} in {self.display_url}: {self._reason(e)}") from e
        root = self.fs._strip_protocol(self.root).rstrip("/") + "/" if self.root else ""
        keys = []
        for p in found:
            p = self.fs._strip_protocol(p)
            if p.startswith(root):
                key = p[len(root) :]
                if not _is_temp(key):
                    keys.append(key)
        return sorted(keys)

    def children(self, prefix: str) -> list[str]:
        """Names directly under ``prefix`` (one level), sorted."""
        base = self.path(prefix)
        try:
            if self.capabilities.local:
                return sorted(os.listdir(base)) if _local_dir(base) else []
            self._fresh(base)
            entries = self._retry("list", prefix, lambda: self.fs.ls(base, detail=False))
        except FileNotFoundError:
            return []
        except OSError as e:
            raise StorageError(f"cannot list {prefix} in {self.display_url}: {self._reason(e)}") from e
        return sorted({str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries} - {""})

    def stale_temp_files(self, older_than: float = 3600.0) -> list[str]:
        """Temporary files that writes killed mid-way left behind (``.<name>.<hex>.tmp``, older than
        ``older_than`` seconds, so never one being written): on local disk and on filesystems that get staged
        writes. Object stores keep unfinished uploads out of sight instead (see docs/repository.md for how each
        store drops them)."""
        cutoff = time.time() - older_than
        found = []
        if self.capabilities.local:
            if not os.path.isdir(self.root):
                return []
            for directory, _dirs, files in os.walk(self.root):
                for name in files:
                    path = os.path.join(directory, name)
                    if _is_temp(name) and _mtime(path) < cutoff:
                        found.append(os.path.relpath(path, self.root).replace(os.sep, "/"))
            return sorted(found)
        if not self.capabilities.staged:
            return []
        try:
            self._fresh(self.root)
            entries = self._retry("list", "/", lambda: self.fs.find(self.root, detail=True))
        except FileNotFoundError:
            return []
        except OSError as e:
            raise StorageError(f"cannot list {self.display_url}: {self._reason(e)}") from e
        prefix = self.fs._strip_protocol(self.root).rstrip("/") + "/" if self.root else ""
        for path, info in dict(entries).items():
            key = self.fs._strip_protocol(path)[len(prefix) :]
            if _is_temp(key):
                with contextlib.suppress(StorageError):
                    if _modified_of(info, key, self.display_url).timestamp() < cutoff:
                        found.append(key)
        return sorted(found)

    def remove_temp_file(self, key: str) -> None:
        """Delete one of `stale_temp_files` (keys that `path` would refuse: they start with a dot)."""
        if not _is_temp(key) or ".." in key.split("/"):
            raise ConfigurationError(f"{key!r} is not a temporary file of this repository")
        if self.capabilities.local:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.root, key))
            return
        path = f"{self.root.rstrip('/')}/{key}" if self.root else key
        with contextlib.suppress(FileNotFoundError):
            self._retry("delete", key, lambda: self.fs.rm_file(path))

    # -- deletes -------------------------------------------------------------------------------------------
    def delete(self, key: str) -> None:
        path = self.path(key)
        try:
            self._retry("delete", key, lambda: self.fs.rm_file(path))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StorageError(f"cannot delete {key!r} in {self.display_url}: {self._reason(e)}") from e
        self._fresh(path)

    def delete_prefix(self, prefix: str) -> None:
        """Delete every object under ``prefix`` (object stores: batched deletes, retried)."""
        path = self.path(prefix)
        try:
            if self.capabilities.local:
                _remove_tree(path)
                return
            paths = [self.path(k) for k in self.list_keys(prefix)]
            if paths:
                try:
                    self._retry("delete", f"{prefix}/", lambda: self.fs.rm(paths))
                except FileNotFoundError:  # a retry after a partial success: delete what is left one by one
                    for key in self.list_keys(prefix):
                        self.delete(key)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StorageError(f"cannot delete {prefix!r} in {self.display_url}: {self._reason(e)}") from e
        self._fresh(path)


def _local_dir(path: str) -> bool:
    """Whether a local directory exists. Unlike `os.path.isdir`, a directory that cannot be looked at (no
    permission) raises instead of reading as absent: a repository we may not read is not an empty one."""
    import stat

    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False


def _remove_tree(path: str) -> None:
    """``rm -r`` that another process may be doing at the same moment (two `expire` runs, say): what the other
    removed first is not an error, and a directory that gained an entry meanwhile (a marker another process
    rewrote) is emptied again. The goal, nothing left, is what counts."""
    import shutil

    def gone_is_fine(_func: object, _path: str, exc_info: tuple[type[BaseException], BaseException, object]) -> None:
        if not isinstance(exc_info[1], FileNotFoundError):
            raise exc_info[1]

    for attempt in range(1, 11):
        try:
            shutil.rmtree(path, onerror=gone_is_fine)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.ENOTEMPTY or attempt == 10:
                raise
            time.sleep(0.01 * attempt)


def _mtime(path: str) -> float:
    try:
        return os.path.getmtime(path)
    except OSError:
        return float("inf")  # gone meanwhile: not stale


def _is_temp(key: str) -> bool:
    name = key.rsplit("/", 1)[-1]
    return name.startswith(".") and name.endswith(".tmp")


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied ({e.filename or e})"
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return "no space left on device"
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text and not isinstance(e, OSError) else text or type(e).__name__


def _unwrap_dir(fs: AbstractFileSystem, root: str) -> tuple[AbstractFileSystem, str]:
    """A ``DirFileSystem`` only prefixes paths: use the filesystem it wraps, under its directory, so that a known
    filesystem keeps its guarantees (local fsync, conditional object-store writes) when reached through one.

    A chained URL (``dir::file:///srv/backups``) hands back the wrapper's own directory as the path inside it:
    that means its top. Subclasses of ``DirFileSystem`` are left alone (they may do more than prefix paths).
    """
    from fsspec.implementations.dirfs import DirFileSystem

    while type(fs) is DirFileSystem:
        base = str(fs.path).rstrip("/")
        inside = root.strip("/")
        if inside == base.strip("/"):
            inside = ""
        root = f"{base}/{inside}" if inside else base
        fs = fs.fs
    return fs, root


def _open_fs(url: str, options: dict[str, Any]) -> tuple[AbstractFileSystem, str]:
    import fsspec.core

    scheme = urlsplit(url).scheme
    if "://" not in url:
        if scheme and len(scheme) > 1:  # "s3:bucket" and the like; a Windows drive letter is one char
            raise ConfigurationError(f"repository URL {redact_url(url)!r} lacks '://': write {scheme}://...")
        url = os.path.abspath(url)
    if scheme in _CACHED_LISTINGS:
        # Listings must be fresh: other processes (archive_command) write into the same repository.
        options = {"use_listings_cache": False, **options}
    try:
        fs, path = fsspec.core.url_to_fs(url, **options)
    except ImportError as e:
        extra = PROVIDER_EXTRAS.get(scheme)
        hint = f'pip install "pgrecovery[{extra}]"' if extra else f"install the fsspec driver for {scheme}://"
        raise MissingDependency(f"{scheme}:// repositories need an extra package: {hint} ({e})") from None
    except ValueError as e:
        if "Protocol not known" in str(e):
            raise ConfigurationError(
                f"unknown storage protocol {scheme!r} in repository URL {redact_url(url)!r}: "
                "use file://, s3://, gs://, az:// or another fsspec protocol"
            ) from None
        raise ConfigurationError(f"bad repository URL {redact_url(url)!r}: {scrub(str(e))}") from None
    except TypeError as e:
        raise ConfigurationError(f"bad storage option for {scheme}://: {scrub(str(e))}") from None
    return fs, str(path)
