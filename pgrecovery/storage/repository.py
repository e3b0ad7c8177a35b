"""`Storage`: the objects of a repository, on any filesystem fsspec reaches (`pgrecovery.Repository` adds the
backups on top of it).

This subpackage is the only one that talks to fsspec. It knows each protocol's quirks through a small capability
table (`_drivers`, where each object store's commit semantics are written down) and offers writes that state
their guarantee: an object is visible under its final name only once it is complete and (on local disk) durable,
and nothing is overwritten unless the caller says so. The writers (`_local`, `_writers`, `_staged`) and readers
(`_readers`) are handed what they need (a `Target`, a `Retry`), never the `Storage` itself.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import attrs

from .._fsutil import is_temp_name
from .._objects import ObjectWriter, StoredObject
from .._redact import redact_url, secret_values
from ..errors import AlreadyExists, ConfigurationError, StorageError
from ._drivers import (
    CHUNK,
    MIN_PART_SIZE,
    PART_SIZE,
    PROVIDER_EXTRAS,
    Capabilities,
    capabilities_of,
    check_usable,
    open_fs,
    unwrap_dir,
)
from ._local import LocalWriter, local_dir, mtime, open_once, remove_tree
from ._readers import ParallelReader, RetryingReader, digest_stream, modified_of, read_ranges
from ._retry import Retry, RetryPolicy, is_transient
from ._staged import StagedWriter
from ._uploads import UnfinishedUpload, abort_upload, unfinished_uploads
from ._writers import BufferWriter, Target, UploadWriter

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

    from ..crypto import EncryptionKey


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
            fs, root_path = unwrap_dir(fs, fs._strip_protocol(root or ""))
            protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
            self.url = f"{protocol}://{root_path.lstrip('/')}" if protocol != "file" else root_path
        else:
            if not url:
                raise ConfigurationError(
                    "no repository given: pass a URL such as file:///var/backups/pg or s3://bucket/prefix "
                    "(CLI: --repo URL or PGRECOVERY_REPO)"
                )
            fs, root_path = unwrap_dir(*open_fs(url, storage_options))
            protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
            self.url = url
        self.fs = fs
        self.protocol = protocol
        self.capabilities = capabilities or capabilities_of(fs)
        if self.capabilities.staged:
            check_usable(fs)
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
    @property
    def _retry(self) -> Retry:
        """How this repository retries and words its failures (made afresh: the policy may be replaced)."""
        return Retry(self.retry_policy, self.display_url, self._secrets)

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
    def writer(self, key: str, *, overwrite: bool = False, hashed: bool = True) -> ObjectWriter:
        """A streaming writer that hashes as it goes. Use as a context manager, or call commit()/abort().

        The object appears under ``key`` only when committed; on local disk it is fsynced (file and directory)
        first. With ``overwrite=False`` an existing object makes this (or, if it appears meanwhile, the commit)
        raise `AlreadyExists`. In an encrypted repository the bytes are encrypted on the way (see
        docs/encryption.md); the size and sha256 returned are those of what was written (the plaintext).
        ``hashed=False``: a caller that knows the content by other means (an archived WAL file is named by its raw
        content's digest) may spare the hash of what is written on local disk, where nothing checks the stored
        bytes against it (the sha256 returned is then empty). Elsewhere the writer hashes regardless: it compares
        what the store kept with what it sent.
        """
        raw = self._raw_writer(key, overwrite=overwrite)
        if not hashed and self.encryption is None and isinstance(raw, LocalWriter):
            raw.unhashed()
        if self.encryption is None:
            return raw
        from ..crypto import EncryptingWriter

        return EncryptingWriter(raw, self.encryption)

    def _raw_writer(self, key: str, *, overwrite: bool = False) -> ObjectWriter:
        path = self.path(key)
        try:
            if self.capabilities.local:
                return LocalWriter(key, path, overwrite)
        except AlreadyExists:
            raise
        except OSError as e:
            raise StorageError(f"cannot write {key!r} in {self.display_url}: {self._retry.reason(e)}") from e
        if not overwrite and self.exists(key):
            raise AlreadyExists(f"refusing to overwrite {key!r}: it is already in the repository")
        if not (self.capabilities.staged or self.capabilities.object_store):
            return BufferWriter(key, self.fs, path, overwrite)
        target = Target(
            key=key,
            path=path,
            fs=self.fs,
            overwrite=overwrite,
            retry=self._retry,
            part_size=self.part_size,
            capabilities=self.capabilities,
            exists=lambda: self.exists(key),
            stored_digest=lambda: self._stored_digest(key),
        )
        if self.capabilities.staged:
            self._ensure_directory(path.rpartition("/")[0])
            return StagedWriter(target)
        return UploadWriter(target)

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
                return open_once(path, CHUNK)
            self._fresh(path)
            f = self._retry(
                "read",
                key,
                lambda: self.fs.open(path, "rb", block_size=self.part_size, cache_type="readahead"),
            )
            size = getattr(f, "size", None)
            if self.capabilities.object_store and isinstance(size, int) and size > 2 * self.part_size:
                f.close()  # a large object (a bundle): ranged GETs in parallel, several connections' throughput
                block, ahead = read_ranges(size, self.part_size)
                reader = ParallelReader(self.fs, path, size, self._retry, key, block=block, ahead=ahead)
                return reader  # type: ignore[return-value]  # io.RawIOBase is a binary stream
        except FileNotFoundError:
            raise StorageError(f"{key!r} is missing from {self.display_url}") from None
        except OSError as e:
            raise StorageError(f"cannot read {key!r} in {self.display_url}: {self._retry.reason(e)}") from e
        return RetryingReader(f, self._retry, key)  # type: ignore[return-value]  # io.RawIOBase is a binary stream

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
            return digest_stream(f)

    def _stored_digest(self, key: str) -> tuple[int, str]:
        """(size, sha256) of the bytes stored under ``key``, as they are (ciphertext when encrypted)."""
        with self._open_raw(key) as f:
            return digest_stream(f)

    def exists(self, key: str) -> bool:
        path = self.path(key)
        try:
            if self.capabilities.local:
                return os.path.exists(path)
            self._fresh(path)
            return bool(self._retry("check", key, lambda: self.fs.exists(path)))
        except OSError as e:
            raise StorageError(f"cannot check {key!r} in {self.display_url}: {self._retry.reason(e)}") from e

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
            raise StorageError(f"cannot check {key!r} in {self.display_url}: {self._retry.reason(e)}") from e
        return modified_of(info, key, self.display_url)

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
            raise StorageError(f"cannot check {key!r} in {self.display_url}: {self._retry.reason(e)}") from e

    def list_keys(self, prefix: str = "") -> list[str]:
        """Every key below ``prefix`` (recursively), sorted. Temporary files of unfinished writes are skipped.

        Object store listings come in pages (1,000 keys on S3, 5,000 on Azure); the drivers follow them all.
        """
        base = self.path(prefix) if prefix else self.root
        try:
            if self.capabilities.local and not local_dir(base):
                return []
            self._fresh(base)
            found = self._retry("list", prefix or "/", lambda: self.fs.find(base))
        except FileNotFoundError:
            return []
        except OSError as e:
            raise StorageError(f"cannot list {prefix or '/'} in {self.display_url}: {self._retry.reason(e)}") from e
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
                return sorted(os.listdir(base)) if local_dir(base) else []
            self._fresh(base)
            entries = self._retry("list", prefix, lambda: self.fs.ls(base, detail=False))
        except FileNotFoundError:
            return []
        except OSError as e:
            raise StorageError(f"cannot list {prefix} in {self.display_url}: {self._retry.reason(e)}") from e
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
                    if _is_temp(name) and mtime(path) < cutoff:
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
            raise StorageError(f"cannot list {self.display_url}: {self._retry.reason(e)}") from e
        prefix = self.fs._strip_protocol(self.root).rstrip("/") + "/" if self.root else ""
        for path, info in dict(entries).items():
            key = self.fs._strip_protocol(path)[len(prefix) :]
            if _is_temp(key):
                with contextlib.suppress(StorageError):
                    if modified_of(info, key, self.display_url).timestamp() < cutoff:
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

    def unfinished_uploads(self, older_than: float = 86400.0) -> list[UnfinishedUpload]:
        """Uploads under this repository that a killed writer left unfinished more than ``older_than`` seconds
        ago: S3 multipart uploads and Azure blobs with only uncommitted blocks (`pgrecovery.storage._uploads`;
        nothing elsewhere: GCS sessions cannot be listed and expire by themselves)."""
        return unfinished_uploads(self, older_than)

    def abort_upload(self, upload: UnfinishedUpload) -> None:
        """Abort one of `unfinished_uploads`, freeing what it stored."""
        abort_upload(self, upload)

    # -- deletes -------------------------------------------------------------------------------------------
    def delete(self, key: str) -> None:
        path = self.path(key)
        try:
            self._retry("delete", key, lambda: self.fs.rm_file(path))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StorageError(f"cannot delete {key!r} in {self.display_url}: {self._retry.reason(e)}") from e
        self._fresh(path)

    def delete_prefix(self, prefix: str) -> None:
        """Delete every object under ``prefix`` (object stores: batched deletes, retried)."""
        path = self.path(prefix)
        try:
            if self.capabilities.local:
                remove_tree(path)
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
            raise StorageError(f"cannot delete {prefix!r} in {self.display_url}: {self._retry.reason(e)}") from e
        self._fresh(path)


def _is_temp(key: str) -> bool:
    return is_temp_name(key.rsplit("/", 1)[-1])


__all__ = [
    "CHUNK",
    "PART_SIZE",
    "PROVIDER_EXTRAS",
    "Capabilities",
    "RetryPolicy",
    "Storage",
    "capabilities_of",
    "is_transient",
]
