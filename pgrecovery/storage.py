"""`Repository`: where backups live, on any filesystem fsspec reaches.

This module is the only one that talks to fsspec. It knows each protocol's quirks through a small capability
table and offers writes that state their guarantee: an object is visible under its final name only once it is
complete and (on local disk) durable, and nothing is overwritten unless the caller says so.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final, Protocol
from urllib.parse import urlsplit, urlunsplit

import attrs

from .errors import AlreadyExists, ConfigurationError, MissingDependency, StorageError

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

    from .manifest import BackupManifest

CHUNK: Final = 1 << 20

# Which extra provides which protocol (for the "install this" message).
_EXTRAS: Final[dict[str, str]] = {
    "s3": "s3",
    "s3a": "s3",
    "gs": "gcs",
    "gcs": "gcs",
    "az": "azure",
    "abfs": "azure",
    "abfss": "azure",
    "adl": "azure",
}


@attrs.frozen
class Capabilities:
    """What a protocol guarantees, so that writes can be made safe on each one."""

    local: bool  # a POSIX filesystem on this host: temp + fsync + link/rename + fsync(dir)
    commit_on_close: bool  # an object store: an upload becomes visible only when completed


_CAPS: Final[dict[str, Capabilities]] = {
    "file": Capabilities(local=True, commit_on_close=False),
    "local": Capabilities(local=True, commit_on_close=False),
    "memory": Capabilities(local=False, commit_on_close=False),
}
_OBJECT_STORE = Capabilities(local=False, commit_on_close=True)


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


class _HashingWriter:
    """Counts and hashes what is written, then hands bytes to `_write_raw`."""

    key: str

    def __init__(self, key: str) -> None:
        self.key = key
        self._hash = hashlib.sha256()
        self._size = 0
        self._done = False

    def write(self, data: bytes, /) -> None:
        if data:
            self._hash.update(data)
            self._size += len(data)
            self._write_raw(data)

    def _write_raw(self, data: bytes) -> None:
        raise NotImplementedError

    def commit(self) -> StoredObject:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def _result(self) -> StoredObject:
        self._done = True
        return StoredObject(key=self.key, size=self._size, sha256=self._hash.hexdigest())

    def __enter__(self) -> _HashingWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._done:
            return
        if exc_type is None:
            self.commit()
        else:
            self.abort()


class _LocalWriter(_HashingWriter):
    """Temp file beside the target, fsync, hard link (no clobber) or rename, fsync of the directory."""

    def __init__(self, key: str, path: str, overwrite: bool) -> None:
        super().__init__(key)
        self._path = path
        self._overwrite = overwrite
        directory = os.path.dirname(path)
        _makedirs_durable(directory)
        self._tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
        if not overwrite and os.path.lexists(path):
            raise AlreadyExists(f"refusing to overwrite {key!r}: it is already in the repository")
        self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)

    def _write_raw(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]

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
            _fsync_dir(os.path.dirname(self._path))
        except BaseException:
            self.abort()
            raise
        return self._result()

    def abort(self) -> None:
        self._done = True
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)


class _BufferWriter(_HashingWriter):
    """For in-memory filesystems: the object is stored in one call at commit."""

    def __init__(self, key: str, fs: AbstractFileSystem, path: str) -> None:
        super().__init__(key)
        self._fs, self._path, self._parts = fs, path, list[bytes]()

    def _write_raw(self, data: bytes) -> None:
        self._parts.append(bytes(data))

    def commit(self) -> StoredObject:
        self._fs.pipe_file(self._path, b"".join(self._parts))
        self._parts.clear()
        return self._result()

    def abort(self) -> None:
        self._done = True
        self._parts.clear()


class _UploadWriter(_HashingWriter):
    """Object stores: a (multipart) upload that is completed on commit and aborted otherwise."""

    def __init__(self, key: str, fs: AbstractFileSystem, path: str) -> None:
        super().__init__(key)
        self._file = fs.open(path, "wb", autocommit=False)

    def _write_raw(self, data: bytes) -> None:
        self._file.write(data)

    def commit(self) -> StoredObject:
        try:
            self._file.close()
            self._file.commit()
        except BaseException:
            self.abort()
            raise
        return self._result()

    def abort(self) -> None:
        self._done = True
        with contextlib.suppress(Exception):
            self._file.discard()


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _makedirs_durable(path: str) -> None:
    """mkdir -p, fsyncing each parent whose entries changed."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent and parent != path:
        _makedirs_durable(parent)
    try:
        os.mkdir(path, 0o750)
    except FileExistsError:
        return
    _fsync_dir(parent or ".")


def redact_url(url: str) -> str:
    """The URL without user info or query (which may carry credentials)."""
    parts = urlsplit(url)
    if not parts.scheme or parts.scheme == "file":
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


@attrs.define(init=False, repr=False, eq=False)
class Repository:
    """A place where backups and WAL live: a URL (plus fsspec storage options) or a filesystem and a root.

    >>> repo = Repository("file:///var/backups/pg")                            # doctest: +SKIP
    >>> repo = Repository("s3://bucket/prefix", endpoint_url="http://...")     # doctest: +SKIP
    >>> repo = Repository(fs=fsspec.filesystem("memory"), root="/r")           # doctest: +SKIP

    Storage options (keys, tokens) are passed to fsspec and never shown in ``repr``, logs or manifests.
    """

    url: str
    fs: AbstractFileSystem
    root: str
    protocol: str
    capabilities: Capabilities

    def __init__(
        self,
        url: str | None = None,
        *,
        fs: AbstractFileSystem | None = None,
        root: str | None = None,
        **storage_options: Any,
    ) -> None:
        if fs is not None:
            if url is not None or storage_options:
                raise ConfigurationError("give either a URL (with storage options) or fs=, not both")
            protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
            root_path = fs._strip_protocol(root or "")
            self.url = f"{protocol}://{root_path.lstrip('/')}" if protocol != "file" else root_path
        else:
            if not url:
                raise ConfigurationError(
                    "no repository given: pass a URL such as file:///var/backups/pg or s3://bucket/prefix "
                    "(CLI: --repo URL or PGRECOVERY_REPO)"
                )
            fs, root_path = _open_fs(url, storage_options)
            protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
            self.url = url
        self.fs = fs
        self.protocol = protocol
        self.capabilities = _CAPS.get(protocol, _OBJECT_STORE)
        if self.capabilities.local:
            root_path = os.path.abspath(root_path)
            if os.path.exists(root_path) and not os.path.isdir(root_path):
                raise ConfigurationError(f"repository path {root_path!r} exists and is not a directory")
        self.root = root_path.rstrip("/") or "/"

    def __repr__(self) -> str:
        return f"Repository({redact_url(self.url)!r})"

    @property
    def display_url(self) -> str:
        """The repository's URL with any credentials removed: safe to log and to put in JSON output."""
        return redact_url(self.url)

    # -- paths ---------------------------------------------------------------------------------------------
    def path(self, key: str) -> str:
        """The filesystem path of ``key`` (a relative POSIX path inside the repository)."""
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ConfigurationError(f"invalid repository key {key!r}")
        return f"{self.root.rstrip('/')}/{key}"

    def local_path(self, key: str) -> Path | None:
        """A local path to read ``key`` directly, when the repository is on this host's filesystem."""
        return Path(self.path(key)) if self.capabilities.local else None

    # -- writes --------------------------------------------------------------------------------------------
    def writer(self, key: str, *, overwrite: bool = False) -> ObjectWriter:
        """A streaming writer that hashes as it goes. Use as a context manager, or call commit()/abort().

        The object appears under ``key`` only when committed; on local disk it is fsynced (file and directory)
        first. With ``overwrite=False`` an existing object makes this raise `AlreadyExists`.
        """
        path = self.path(key)
        try:
            if self.capabilities.local:
                return _LocalWriter(key, path, overwrite)
            if not overwrite and self.fs.exists(path):
                raise AlreadyExists(f"refusing to overwrite {key!r}: it is already in the repository")
            if self.capabilities.commit_on_close:
                return _UploadWriter(key, self.fs, path)
            return _BufferWriter(key, self.fs, path)
        except AlreadyExists:
            raise
        except OSError as e:
            raise StorageError(f"cannot write {key!r} in {self.display_url}: {_reason(e)}") from e

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
        """A readable binary stream of ``key``."""
        path = self.path(key)
        try:
            if self.capabilities.local:
                return open(path, "rb", buffering=CHUNK)
            return self.fs.open(path, "rb", block_size=8 * CHUNK, cache_type="readahead")  # type: ignore[no-any-return]
        except FileNotFoundError:
            raise StorageError(f"{key!r} is missing from {self.display_url}") from None
        except OSError as e:
            raise StorageError(f"cannot read {key!r} in {self.display_url}: {_reason(e)}") from e

    def read_bytes(self, key: str) -> bytes:
        with self.open(key) as f:
            return f.read()

    def iter_chunks(self, key: str, chunk: int = CHUNK) -> Iterator[bytes]:
        with self.open(key) as f:
            while data := f.read(chunk):
                yield data

    def digest(self, key: str) -> tuple[int, str]:
        """(size, sha256) of the stored bytes of ``key``, read back from storage."""
        h, size = hashlib.sha256(), 0
        for data in self.iter_chunks(key, 4 * CHUNK):
            h.update(data)
            size += len(data)
        return size, h.hexdigest()

    def exists(self, key: str) -> bool:
        path = self.path(key)
        try:
            if self.capabilities.local:
                return os.path.exists(path)
            return bool(self.fs.exists(path))
        except OSError as e:
            raise StorageError(f"cannot check {key!r} in {self.display_url}: {_reason(e)}") from e

    def size(self, key: str) -> int:
        try:
            return int(self.fs.size(self.path(key)))
        except FileNotFoundError:
            raise StorageError(f"{key!r} is missing from {self.display_url}") from None

    def list_keys(self, prefix: str = "") -> list[str]:
        """Every key below ``prefix`` (recursively), sorted. Temporary files of unfinished writes are skipped."""
        base = self.path(prefix) if prefix else self.root
        try:
            if self.capabilities.local and not os.path.isdir(base):
                return []
            found = self.fs.find(base)
        except FileNotFoundError:
            return []
        except OSError as e:
            raise StorageError(f"cannot list {prefix or '/'} in {self.display_url}: {_reason(e)}") from e
        root = self.fs._strip_protocol(self.root).rstrip("/") + "/"
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
                return sorted(os.listdir(base)) if os.path.isdir(base) else []
            entries = self.fs.ls(base, detail=False)
        except FileNotFoundError:
            return []
        except OSError as e:
            raise StorageError(f"cannot list {prefix} in {self.display_url}: {_reason(e)}") from e
        return sorted({str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries})

    # -- deletes -------------------------------------------------------------------------------------------
    def delete(self, key: str) -> None:
        try:
            self.fs.rm_file(self.path(key))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StorageError(f"cannot delete {key!r} in {self.display_url}: {_reason(e)}") from e

    def delete_prefix(self, prefix: str) -> None:
        """Delete every object under ``prefix``."""
        path = self.path(prefix)
        try:
            if self.capabilities.local:
                import shutil

                shutil.rmtree(path, ignore_errors=False)
            elif self.fs.exists(path):
                self.fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StorageError(f"cannot delete {prefix!r} in {self.display_url}: {_reason(e)}") from e

    # -- backups (see catalog.py) ---------------------------------------------------------------------------
    def backups(self, kind: str | None = None) -> list[BackupManifest]:
        """Complete backups (those whose manifest is written), oldest first."""
        from .catalog import list_backups

        return list_backups(self, kind)

    def get(self, backup_id: str, kind: str | None = None) -> BackupManifest:
        """The manifest of a complete backup; ``"latest"`` is the newest (of ``kind`` when given)."""
        from .catalog import resolve

        return resolve(self, backup_id, kind)

    def delete_backup(self, backup_id: str, *, with_dependents: bool = False) -> list[BackupManifest]:
        """Delete a complete backup: its manifest first (so it is never listed half-deleted), then its data.

        A base backup that incremental backups rely on is refused unless ``with_dependents`` (they go too).
        Returns the manifests of what was deleted.
        """
        from .catalog import delete_backup

        return delete_backup(self, backup_id, with_dependents=with_dependents)


def _is_temp(key: str) -> bool:
    name = key.rsplit("/", 1)[-1]
    return name.startswith(".") and name.endswith(".tmp")


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied ({e.filename or e})"
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return "no space left on device"
    return str(e) or type(e).__name__


def _open_fs(url: str, options: dict[str, Any]) -> tuple[AbstractFileSystem, str]:
    import fsspec.core

    scheme = urlsplit(url).scheme
    if "://" not in url:
        if scheme and len(scheme) > 1:  # "s3:bucket" and the like; a Windows drive letter is one char
            raise ConfigurationError(f"repository URL {redact_url(url)!r} lacks '://': write {scheme}://...")
        url = os.path.abspath(url)
    try:
        fs, path = fsspec.core.url_to_fs(url, **options)
    except ImportError as e:
        extra = _EXTRAS.get(scheme)
        hint = f'pip install "pgrecovery[{extra}]"' if extra else f"install the fsspec driver for {scheme}://"
        raise MissingDependency(f"{scheme}:// repositories need an extra package: {hint} ({e})") from None
    except ValueError as e:
        if "Protocol not known" in str(e):
            raise ConfigurationError(
                f"unknown storage protocol {scheme!r} in repository URL {redact_url(url)!r}: "
                "use file://, s3://, gs://, az:// or another fsspec protocol"
            ) from None
        raise ConfigurationError(f"bad repository URL {redact_url(url)!r}: {e}") from None
    except TypeError as e:
        raise ConfigurationError(f"bad storage option for {scheme}://: {e}") from None
    return fs, str(path)
