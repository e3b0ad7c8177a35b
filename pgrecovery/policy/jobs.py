"""What a policy is: its `Job` s (a kind, a schedule and the options of the API call behind it), the
repositories they use (`RepositoryRef`), and the whole `BackupPolicy`, checked when it is made."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol

import attrs

from .._redact import redact_url
from ..errors import ConfigurationError
from ._invalid import _Invalid, _unknown
from .schedule import Schedule

if TYPE_CHECKING:
    from ..manifest import BackupManifest
    from ..progress import ProgressCallback
    from ..repository import Repository
    from ..retention import RetentionPolicy

JOB_KINDS: Final = ("logical", "globals", "cluster", "base", "verify", "copy", "expire", "wal-cleanup")
BACKUP_KINDS: Final = ("logical", "globals", "cluster", "base")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # a policy's name (its files are named after it)
_JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")  # a bare TOML key: [jobs.NAME]


_STR, _INT, _BOOL, _STRS = "a string", "a whole number", "true or false", "a list of strings"
_VERIFY_OPTIONS: Final = {
    "backup": _STR,
    "backup_kind": _STR,
    "checksums": _BOOL,
    "readable": _BOOL,
    "drill": _BOOL,
    "drill_server": _STR,
    "source": _STR,
    "compare_source": _BOOL,
    "jobs": _INT,
    "workdir": _STR,
}
_COPY_OPTIONS: Final = {"to": _STRS, "workers": _INT, "wal": _BOOL}
_RETENTION_OPTIONS: Final = {
    "preset": _STR,
    "keep_last": _INT,
    "keep_days": _INT,
    "daily": _INT,
    "weekly": _INT,
    "monthly": _INT,
    "yearly": _INT,
    "wal": _BOOL,
    "pitr_days": _INT,
}
_EXPIRE_OPTIONS: Final = {**_RETENTION_OPTIONS, "include_copies": _BOOL}
_WAL_CLEANUP_OPTIONS: Final = {"keep_from": _STR, "timeline": _INT, "segment_size": _INT}
_CONNINFO_OPTIONS: Final = ("dbname", "drill_server", "source")


class BackupJob(attrs.AttrsInstance, Protocol):
    """What a backup job builds from its options: an attrs class whose fields are the job's options and whose
    ``run`` takes the backup (`LogicalBackup`, `GlobalsBackup`, `ClusterBackup`, `BaseBackup`)."""

    def __init__(self, **options: Any) -> None: ...

    def run(self, repo: Repository, *, progress: ProgressCallback | None = None) -> BackupManifest: ...


def _backup_class(kind: str) -> type[BackupJob]:
    if kind == "base":
        from ..physical.backup import BaseBackup

        return BaseBackup
    from ..logical.backup import ClusterBackup, GlobalsBackup, LogicalBackup

    classes: dict[str, type[BackupJob]] = {
        "logical": LogicalBackup,
        "globals": GlobalsBackup,
        "cluster": ClusterBackup,
    }
    return classes[kind]


def _is(value: Any, expected: str) -> bool:
    if expected == _BOOL:
        return isinstance(value, bool)
    if expected == _INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected == _STR:
        return isinstance(value, str)
    if expected == _STRS:
        return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
    return True


def _expected_from_default(default: Any) -> str | None:
    """What a backup class's field takes, judged from its default (None: not checked here)."""
    if isinstance(default, bool):
        return _BOOL
    if isinstance(default, int):
        return _INT
    if isinstance(default, str):
        return _STR
    if isinstance(default, tuple):
        return _STRS
    return None


def _check_table(where: str, options: Mapping[str, Any], spec: Mapping[str, str]) -> None:
    for key, value in options.items():
        if key not in spec:
            raise _unknown(key, where, spec)
        if not _is(value, spec[key]):
            raise _Invalid(key, f"{key} = {value!r}: expected {spec[key]}")


def _backup_object(kind: str, options: Mapping[str, Any]) -> BackupJob:
    """The `LogicalBackup` / `GlobalsBackup` / `ClusterBackup` / `BaseBackup` a job's options describe."""
    cls = _backup_class(kind)
    fields = {f.name: f for f in attrs.fields(cls)}
    for key, value in options.items():
        if key not in fields:
            raise _unknown(key, f"for a {kind} job", fields)
        default = fields[key].default
        expected = _expected_from_default(default)
        if isinstance(default, float):
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise _Invalid(key, f"{key} = {value!r}: expected a number")
        elif expected is not None and not _is(value, expected):
            raise _Invalid(key, f"{key} = {value!r}: expected {expected}")
    try:
        return cls(**options)
    except (TypeError, ValueError) as e:
        attribute = e.args[1] if len(e.args) > 1 and isinstance(e.args[1], attrs.Attribute) else None
        raise _Invalid(
            attribute.name if attribute is not None else None,
            f"bad option for a {kind} job: {e.args[0] if e.args else e}",
        ) from None
    except ConfigurationError as e:
        raise _Invalid(None, str(e)) from None


def retention_from(options: Mapping[str, Any], base: RetentionPolicy | None = None) -> RetentionPolicy:
    """A `RetentionPolicy` from TOML-style keys: ``preset`` (a preset's name), else ``base``, with the other keys
    (the policy's fields) on top."""
    from ..retention import RetentionPolicy

    changes = {k: v for k, v in options.items() if k in _RETENTION_OPTIONS and k != "preset"}
    preset = options.get("preset")
    try:
        if preset is not None:
            base = RetentionPolicy.preset(str(preset))
        if base is None:
            return RetentionPolicy(**changes)
        if changes.get("wal") is False and "pitr_days" not in changes:
            changes["pitr_days"] = None
        return attrs.evolve(base, **changes) if changes else base
    except ConfigurationError as e:
        key = next((k for k in options if k in str(e)), None)
        raise _Invalid(key, str(e)) from None


def _check_options(kind: str, options: Mapping[str, Any]) -> None:
    if kind in BACKUP_KINDS:
        _backup_object(kind, options)
    elif kind == "verify":
        _check_table("for a verify job", options, _VERIFY_OPTIONS)
        if options.get("backup_kind") not in (None, *BACKUP_KINDS):
            raise _Invalid("backup_kind", f"backup_kind must be one of {', '.join(BACKUP_KINDS)}")
    elif kind == "copy":
        _check_table("for a copy job", options, _COPY_OPTIONS)
    elif kind == "expire":
        _check_table("for an expire job", options, _EXPIRE_OPTIONS)
    elif kind == "wal-cleanup":
        _check_table("for a wal-cleanup job", options, _WAL_CLEANUP_OPTIONS)


def _check_kind(kind: str) -> None:
    if kind not in JOB_KINDS:
        close = difflib.get_close_matches(kind, JOB_KINDS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise _Invalid("kind", f"kind = {kind!r}: {hint}use one of {', '.join(JOB_KINDS)}")


@attrs.frozen(kw_only=True)
class Job:
    """One thing a policy does on a schedule. ``kind`` is one of `JOB_KINDS`; ``options`` are the keyword
    arguments of the API call behind it (for backups, the fields of `LogicalBackup`, `GlobalsBackup`,
    `ClusterBackup` or `BaseBackup`; see docs/policy.md for the others). ``enabled = False`` pauses it."""

    name: str
    kind: str
    schedule: Schedule
    options: Mapping[str, Any] = attrs.field(factory=dict, converter=dict)
    enabled: bool = True

    def __attrs_post_init__(self) -> None:
        if not _JOB_NAME.match(self.name):
            raise ConfigurationError(
                f"job name {self.name!r}: use letters, digits, '_' and '-' (starting with a letter or digit)"
            )
        try:
            _check_kind(self.kind)
            _check_options(self.kind, self.options)
        except _Invalid as e:
            raise _Invalid(e.key, f"job {self.name!r}: {e}") from None

    def describe(self) -> str:
        return f"{self.name} ({self.kind}, {self.schedule.describe()})"


def _jobs(values: Iterable[Job]) -> tuple[Job, ...]:
    return tuple(values)


def _repository_ref(value: RepositoryRef | str) -> RepositoryRef:
    return value if isinstance(value, RepositoryRef) else RepositoryRef(url=value)


def _repository_refs(values: Iterable[RepositoryRef | str]) -> tuple[RepositoryRef, ...]:
    return tuple(_repository_ref(v) for v in values)


@attrs.frozen(kw_only=True)
class RepositoryRef:
    """A repository named by URL plus fsspec storage options (credentials: from the environment, see
    docs/repository.md). Opened when a job needs it."""

    url: str
    storage_options: Mapping[str, Any] = attrs.field(factory=dict, converter=dict, repr=False)

    @property
    def display_url(self) -> str:
        return redact_url(self.url)

    def open(self) -> Repository:
        from ..crypto import EncryptionKey
        from ..repository import Repository

        # the key of an encrypted repository comes from the environment (never from the policy file)
        return Repository(self.url, encryption=EncryptionKey.from_environment(), **self.storage_options)


@attrs.frozen(kw_only=True)
class BackupPolicy:
    """A whole policy: the primary ``repository`` (backups go there), its ``copies`` (``copy`` jobs bring them
    up to date), the default ``retention`` of ``expire`` jobs, and the ``jobs``, run in this order.

    ``name`` names the state and lock files in ``state_dir`` (default: see `default_state_dir`); ``source`` is
    the file the policy came from, if any.
    """

    name: str
    repository: RepositoryRef = attrs.field(converter=_repository_ref)
    jobs: tuple[Job, ...] = attrs.field(converter=_jobs)
    copies: tuple[RepositoryRef, ...] = attrs.field(default=(), converter=_repository_refs)
    retention: RetentionPolicy | None = None
    state_dir: str | None = None
    source: str | None = None

    def __attrs_post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise _Invalid("name", f"policy name {self.name!r}: use letters, digits, '.', '_' and '-'")
        if not self.jobs:
            raise _Invalid(None, "a policy needs at least one job: add a [jobs.NAME] table")
        seen: set[str] = set()
        for job in self.jobs:
            if job.name in seen:
                raise _Invalid(None, f"two jobs are named {job.name!r}: give each job its own name")
            seen.add(job.name)
            if job.kind == "copy":
                if not self.copies:
                    raise _Invalid(
                        None, f'job {job.name!r} copies, but the policy has no copies: add copies = ["s3://..."]'
                    )
                known = {c.url for c in self.copies} | {c.display_url for c in self.copies}
                for url in _as_list(job.options.get("to", [])):
                    if url not in known:
                        raise _Invalid("to", f"job {job.name!r}: to = {url!r} is not one of the policy's copies")
            if job.kind == "expire":
                if self.retention is None and not any(k in _RETENTION_OPTIONS for k in job.options):
                    raise _Invalid(
                        None,
                        f"job {job.name!r} expires backups, but there is no retention policy: add a [retention] "
                        'table (e.g. preset = "production", or keep_days = 30) or the same keys to the job',
                    )
                try:
                    self.retention_of(job)
                except _Invalid as e:
                    raise _Invalid(e.key, f"job {job.name!r}: {e}") from None

    def retention_of(self, job: Job) -> RetentionPolicy | None:
        """The retention an expire job applies: the policy's, with the job's own keys on top."""
        own = {k: v for k, v in job.options.items() if k in _RETENTION_OPTIONS}
        return retention_from(own, self.retention) if own else self.retention

    def job(self, name: str) -> Job:
        for job in self.jobs:
            if job.name == name:
                return job
        raise ConfigurationError(f"no job named {name!r} in policy {self.name}: the jobs are {self._job_names()}")

    def _job_names(self) -> str:
        return ", ".join(j.name for j in self.jobs)


def _as_list(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value)
