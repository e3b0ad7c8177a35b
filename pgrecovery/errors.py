"""One exception hierarchy: catch `PgRecoveryError` for everything, or a child for one kind of failure.

Every message says what went wrong *and* what to do about it. The library raises; only `cli.py` turns
exceptions into exit codes and one-line messages.
"""

from __future__ import annotations

import os

from ._redact import redact


class PgRecoveryError(Exception):
    """Base of every error pgrecovery raises on purpose.

    Its message is redacted when the error is made (passwords, keys, tokens, URL passwords become ``***``), so
    that no secret a driver or a tool echoed reaches ``str()``, ``repr()``, a log line or the command's stderr.

    Besides the message an error may carry structured fields, given as keywords and redacted when the error is made
    like the message, so that a caller need not parse the message (as psycopg's errors carry ``sqlstate``):
    ``backup_id`` (the backup concerned), ``key`` (an object key in the repository), ``segment`` (a WAL file name),
    ``path`` (a local path) and ``target`` (a recovery target, as described). Each is None when not known.

    >>> e = WalGap("WAL segment 000000010000000000000007 is missing", segment="000000010000000000000007")
    >>> e.segment, str(e)
    ('000000010000000000000007', 'WAL segment 000000010000000000000007 is missing')
    """

    backup_id: str | None
    key: str | None
    segment: str | None
    path: str | None
    target: str | None

    def __init__(
        self,
        *args: object,
        backup_id: str | None = None,
        key: str | None = None,
        segment: str | None = None,
        path: str | os.PathLike[str] | None = None,
        target: str | None = None,
    ) -> None:
        if args and isinstance(args[0], str):
            args = (redact(args[0]), *args[1:])
        super().__init__(*args)
        self.backup_id = _field(backup_id)
        self.key = _field(key)
        self.segment = _field(segment)
        self.path = _field(None if path is None else os.fspath(path))
        self.target = _field(target)

    @property
    def fields(self) -> dict[str, str]:
        """The structured fields that are set, by name (already redacted)."""
        names = ("backup_id", "key", "segment", "path", "target")
        return {n: v for n in names if (v := getattr(self, n, None)) is not None}


def _field(value: str | None) -> str | None:
    """A structured field, redacted like a message (a key or path may hold a signed URL or a password)."""
    return None if value is None else redact(str(value))


class ConfigurationError(PgRecoveryError):
    """Bad input from the caller: an option, a URL, a name. Fix the call and retry."""


class MissingDependency(ConfigurationError):
    """An optional Python package is needed for this storage or feature."""


class BackupNotFound(ConfigurationError):
    """No complete backup has the id (or alias) that was asked for."""


class StorageError(PgRecoveryError):
    """The repository's storage failed to read, write, list or delete an object."""


class AlreadyExists(StorageError):
    """An object is already stored under that name; pgrecovery never overwrites silently."""


class NotStored(StorageError):
    """A write finished without error, but reading the storage back does not show the object as written (missing,
    or another size or digest): the filesystem dropped or damaged it. Nothing is reported stored in that case."""


class ChecksumMismatch(StorageError):
    """Stored bytes differ from what the manifest recorded (size or sha256)."""


class ManifestError(StorageError):
    """A manifest cannot be parsed or was written by a newer, incompatible pgrecovery."""


class ToolNotFound(PgRecoveryError):
    """A PostgreSQL program (pg_dump, initdb, ...) cannot be found or is too old."""


class ToolFailed(PgRecoveryError):
    """A PostgreSQL program exited with an error; the message carries its stderr."""


class DatabaseError(PgRecoveryError):
    """A database could not be reached or a query on it failed."""


class ClusterError(PgRecoveryError):
    """A LocalCluster could not be created, started, stopped or configured."""


class BackupError(PgRecoveryError):
    """Taking a backup failed; nothing was listed as complete."""


class RestoreError(PgRecoveryError):
    """Restoring a backup failed."""


class TargetUnreachable(RestoreError):
    """A recovery target cannot be reached with what the repository holds; the message says why."""


class WalGap(TargetUnreachable):
    """A WAL segment needed between a base backup and the target is missing from the archive."""


class VerificationFailed(PgRecoveryError):
    """A verification check failed; the report says which one."""


class PolicyLocked(PgRecoveryError):
    """Another ``run-policy`` holds the policy's lock; the message says which process and since when."""


class EncryptionError(PgRecoveryError):
    """An encrypted object cannot be written or read: no key, a bad key, or an object that is not as written."""


class WrongKey(EncryptionError):
    """The object was encrypted with another key; the message names both key ids and where the key comes from."""


class TamperedObject(EncryptionError, ChecksumMismatch):
    """An encrypted object failed authentication (changed, truncated, reordered, spliced): nothing of it is used.

    Also a `ChecksumMismatch`, so that code handling corrupt objects handles these too.
    """


__all__ = [
    "AlreadyExists",
    "BackupError",
    "BackupNotFound",
    "ChecksumMismatch",
    "ClusterError",
    "ConfigurationError",
    "DatabaseError",
    "EncryptionError",
    "ManifestError",
    "MissingDependency",
    "PgRecoveryError",
    "PolicyLocked",
    "RestoreError",
    "StorageError",
    "TamperedObject",
    "TargetUnreachable",
    "ToolFailed",
    "ToolNotFound",
    "VerificationFailed",
    "WalGap",
    "WrongKey",
]
