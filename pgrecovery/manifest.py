"""The backup manifest: attrs value objects and their versioned JSON form.

A manifest is written last, with no-clobber semantics: its presence is what makes a backup complete. The JSON is
the documented, stable shape that ``pgrecovery show --json`` prints (see docs/json.md); a field is only ever added,
and ``schema_version`` goes up when a reader of the old version could not understand the new one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Final, Literal, TypeVar, get_args

import attrs

from .codec import CODECS, Codec
from .errors import ManifestError

BackupKind = Literal["logical", "globals", "cluster", "base"]
BACKUP_KINDS: Final[tuple[BackupKind, ...]] = get_args(BackupKind)
# The archive format: pg_dump's (logical, globals: plain, cluster: custom) or a base backup's tar bundles
Format = Literal["custom", "directory", "plain", "tar"]
FORMATS: Final[tuple[Format, ...]] = get_args(Format)
# A codec pgrecovery applies as the data streams, or pg_dump's own compression
Compression = Literal["zstd", "gzip", "lz4", "none", "pg_dump"]
COMPRESSIONS: Final[tuple[Compression, ...]] = get_args(Compression)

_T = TypeVar("_T", bound=str)

SCHEMA_VERSION: Final = 2
# Version 2 added block-level members (MemberEntry.blocks): a manifest without them is still written as version 1,
# so that an older pgrecovery keeps reading every backup it could read before.
PLAIN_SCHEMA_VERSION: Final = 1
# The stored JSON carries the sha256 of its own content, so that a changed byte anywhere in a manifest (a name,
# a time, a count: fields no other check covers) is detected when it is read.
CHECKSUM_FIELD: Final = "manifest_sha256"


def _utc(value: datetime | str) -> datetime:
    dt = datetime.fromisoformat(value) if isinstance(value, str) else value
    if dt.tzinfo is None:
        raise ValueError(f"timestamp {value!r} has no time zone")
    return dt.astimezone(UTC)


def _codec(value: str) -> Codec:
    if value not in CODECS:
        raise ValueError(f"unknown codec {value!r}")
    return value


def _one_of(value: str, allowed: tuple[_T, ...], what: str) -> _T:
    """``value`` if it is one of ``allowed`` (a closed set), else `ValueError` naming it and the known values."""
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r} (known: {', '.join(map(str, allowed))})")
    return value


def _kind(value: str) -> BackupKind:
    return _one_of(value, BACKUP_KINDS, "backup kind")


def _format(value: str) -> Format:
    return _one_of(value, FORMATS, "format")


def _compression(value: str) -> Compression:
    return _one_of(value, COMPRESSIONS, "compression")


def _files(value: Iterable[FileEntry]) -> tuple[FileEntry, ...]:
    return tuple(value)


def _names(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


def _index_record(value: Mapping[str, Iterable[str]] | None) -> dict[str, tuple[str, ...]] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or any(isinstance(names, str | bytes) for names in value.values()):
        raise TypeError("invalid_indexes must map database names to lists of index names")
    return {str(db): tuple(str(i) for i in names) for db, names in value.items()}


@attrs.frozen(kw_only=True)
class FileEntry:
    """One stored object of a backup, relative to the backup's directory."""

    path: str
    size: int
    sha256: str
    codec: Codec = attrs.field(converter=_codec)
    raw_size: int | None = None
    role: str = "data"


@attrs.frozen(kw_only=True)
class ContentSummary:
    """Counts taken from the archive's table of contents."""

    schemas: int
    tables: int
    objects: int
    by_type: dict[str, int] = attrs.field(factory=dict)


def _members(value: Iterable[MemberEntry]) -> tuple[MemberEntry, ...]:
    return tuple(value)


@attrs.frozen(kw_only=True)
class MemberEntry:
    """One file of a physical backup: where it goes in the data directory, and where it is stored.

    ``path`` is relative to the data directory (``tblspc/<oid>/...`` for a tablespace's files); ``bundle`` is
    the role of the stored file (a compressed tar) that holds it, in backup ``source`` (this one, or a parent
    of an incremental backup).

    ``blocks`` is None when the member holds the whole file (``size`` bytes, whose sha256 is ``sha256``). A
    string of block ranges (``"0-4,9,12-15"``, possibly empty) makes it a block-level delta: it holds only those
    blocks, in that order (``sha256`` is of those bytes), over the same path as of the parent of ``source``;
    ``size`` is the file's size once rebuilt (a smaller size truncates, a larger one extends with zeros).
    """

    path: str
    size: int
    mtime: int
    sha256: str
    bundle: str
    source: str
    blocks: str | None = None


@attrs.frozen(kw_only=True)
class PhysicalInfo:
    """What a base backup needs for recovery: its WAL range, timeline and identity."""

    method: str
    label: str
    start_lsn: str
    stop_lsn: str
    timeline: int
    start_wal: str
    stop_wal: str
    system_identifier: str
    data_checksums: bool
    wal_segment_size: int
    next_xid: int | None = None
    parent: str | None = None
    tablespaces: dict[str, str] = attrs.field(factory=dict)
    directories: tuple[str, ...] = attrs.field(default=(), converter=_names)
    members: tuple[MemberEntry, ...] = attrs.field(default=(), converter=_members)
    # How an incremental backup found what changed since ``parent``: "wal-summaries" (PostgreSQL 17+ read only
    # the blocks its WAL summaries name), "page-lsn" (every relation page read, those newer than the parent's
    # start stored) or "file" (whole files compared); None for a full backup.
    incremental: str | None = None
    block_size: int = 8192


@attrs.frozen(kw_only=True)
class BackupManifest:
    """Everything known about one complete backup. Never holds a password or storage key."""

    id: str
    kind: BackupKind = attrs.field(converter=_kind)
    started_at: datetime = attrs.field(converter=_utc)
    finished_at: datetime = attrs.field(converter=_utc)
    format: Format = attrs.field(converter=_format)
    compression: Compression = attrs.field(converter=_compression)
    compression_level: int | None = None
    files: tuple[FileEntry, ...] = attrs.field(converter=_files)
    database: str | None = None
    databases: tuple[str, ...] = attrs.field(default=(), converter=_names)
    source: dict[str, str] = attrs.field(factory=dict)
    server_version: str = ""
    tool_version: str = ""
    options: dict[str, Any] = attrs.field(factory=dict)
    summary: ContentSummary | None = None
    physical: PhysicalInfo | None = None
    pgrecovery_version: str = ""
    encryption: dict[str, str] | None = None  # {"cipher", "format", "key_id"} when the repository encrypts
    # Indexes that were invalid in the source when the backup was taken, as "schema.name" lists keyed by database
    # name: a restore drill tells a faithful copy of them from damage. None: not recorded (older backups).
    invalid_indexes: dict[str, tuple[str, ...]] | None = attrs.field(default=None, converter=_index_record)
    schema_version: int = 0  # 0: the oldest version that can describe it

    def __attrs_post_init__(self) -> None:
        if not self.schema_version:  # see PLAIN_SCHEMA_VERSION
            blocky = self.physical is not None and any(m.blocks is not None for m in self.physical.members)
            object.__setattr__(self, "schema_version", SCHEMA_VERSION if blocky else PLAIN_SCHEMA_VERSION)

    @property
    def duration(self) -> float:
        """Seconds from start to finish."""
        return (self.finished_at - self.started_at).total_seconds()

    @property
    def size(self) -> int:
        """Bytes stored in the repository for this backup (after compression)."""
        return sum(f.size for f in self.files)

    @property
    def raw_size(self) -> int | None:
        """Bytes before compression, when known for every file."""
        sizes = [f.raw_size for f in self.files]
        return None if any(s is None for s in sizes) else sum(s for s in sizes if s is not None)

    def file(self, role: str) -> FileEntry:
        for f in self.files:
            if f.role == role:
                return f
        raise ManifestError(f"backup {self.id} has no file with role {role!r}")

    def to_dict(self) -> dict[str, Any]:
        def ser(_inst: object, _field: object, value: Any) -> Any:
            return value.isoformat() if isinstance(value, datetime) else value

        data = attrs.asdict(self, value_serializer=ser)
        data["duration"] = round(self.duration, 3)
        data["size"] = self.size
        data["raw_size"] = self.raw_size
        return data

    def to_json(self) -> str:
        """The stored form: `to_dict` plus ``manifest_sha256``, the sha256 of that content."""
        data = self.to_dict()
        data[CHECKSUM_FIELD] = _content_digest(data)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackupManifest:
        version = data.get("schema_version")
        if not isinstance(version, int):
            raise ManifestError("manifest has no schema_version: it was not written by pgrecovery")
        if version > SCHEMA_VERSION:
            raise ManifestError(
                f"manifest schema version {version} is newer than this pgrecovery understands "
                f"({SCHEMA_VERSION}): upgrade pgrecovery"
            )
        names = {a.name for a in attrs.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        try:
            kwargs["files"] = [FileEntry(**f) for f in kwargs.get("files", [])]
            if kwargs.get("summary") is not None:
                kwargs["summary"] = ContentSummary(**kwargs["summary"])
            if kwargs.get("physical") is not None:
                phys = dict(kwargs["physical"])
                phys["members"] = [MemberEntry(**x) for x in phys.get("members", [])]
                kwargs["physical"] = PhysicalInfo(**phys)
            return cls(**kwargs)
        except (TypeError, ValueError) as e:
            raise ManifestError(f"manifest is malformed: {e}") from None

    @classmethod
    def from_json(cls, text: str | bytes) -> BackupManifest:
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ManifestError(f"manifest is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ManifestError("manifest is not a JSON object")
        version = data.get("schema_version")
        if not (isinstance(version, int) and version > SCHEMA_VERSION):  # a newer one: from_dict says upgrade
            _check_own_digest(data)
        return cls.from_dict(data)


def _content_digest(data: dict[str, Any]) -> str:
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _check_own_digest(data: dict[str, Any]) -> None:
    """Remove ``manifest_sha256`` from ``data`` and raise `ManifestError` unless it matches the rest.

    A manifest without one (written before it existed) is accepted, unless a key one character away from it
    is there instead: that is the field itself, damaged.
    """
    stated = data.pop(CHECKSUM_FIELD, None)
    if stated is None:
        for key in data:
            if len(key) == len(CHECKSUM_FIELD) and sum(a != b for a, b in zip(key, CHECKSUM_FIELD, strict=True)) == 1:
                raise ManifestError(f"manifest has {key!r} where {CHECKSUM_FIELD!r} belongs: it is damaged")
        return
    if stated != _content_digest(data):
        raise ManifestError(
            f"manifest content does not match its {CHECKSUM_FIELD}: it is damaged; "
            "restore it from a copy of the repository (or delete the backup)"
        )
