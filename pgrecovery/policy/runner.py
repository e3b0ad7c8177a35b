"""Declarative backup policies: what to back up, how often, where to, how long to keep it, how to check it.

A policy is a TOML file (see docs/policy.md) or a `BackupPolicy` built in Python. `run_policy` runs the jobs that
are due and records each outcome in a local state file; it is meant to be called from cron every few minutes:

- a job is due when its last successful run started before its schedule's previous fire time (with no record
  in the state file, a backup job looks at the newest backup of its kind in the repository instead);
- a failed job is recorded as failed and is due again at the next call; the other jobs still run;
- one run at a time: an exclusive ``fcntl`` lock on a file in the state directory; a second call is refused
  with `PolicyLocked`, naming the process that holds it and since when;
- the state file is written atomically (temporary file, fsync, rename) after every job.

Every job is one public API call: `LogicalBackup`, `GlobalsBackup`, `ClusterBackup`, `BaseBackup`,
`Verifier.verify`, `copy_repository`, `retention.expire`, `WalArchiver.cleanup`.

>>> policy = load_policy("/etc/pgrecovery/policy.toml")          # doctest: +SKIP
>>> result = run_policy(policy)                                  # doctest: +SKIP
>>> [(j.name, j.status) for j in result.jobs]                    # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import difflib
import getpass
import json
import logging
import os
import re
import socket
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import attrs

from .._redact import is_secret_option, scrub
from ..errors import ConfigurationError, PgRecoveryError, PolicyLocked

if TYPE_CHECKING:
    from ..monitoring.status import StatusTable
    from ..repository import Repository
    from ..retention import RetentionPolicy

log = logging.getLogger(__package__)  # one logger per area, whichever module of it logs

STATE_VERSION: Final = 1
JOB_KINDS: Final = ("logical", "globals", "cluster", "base", "verify", "copy", "expire", "wal-cleanup")
BACKUP_KINDS: Final = ("logical", "globals", "cluster", "base")
WEEKDAYS: Final = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # a policy's name (its files are named after it)
_JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")  # a bare TOML key: [jobs.NAME]


class _Invalid(ConfigurationError):
    """A bad value, with the key it belongs to (so that `load_policy` can point at its line)."""

    def __init__(self, key: str | None, message: str) -> None:
        super().__init__(message)
        self.key = key


# -- schedules -----------------------------------------------------------------------------------------------

_UNITS: Final = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_MONDAY: Final = datetime(1970, 1, 5, tzinfo=UTC)  # the anchor of `every` schedules: a Monday, 00:00 UTC
_MINUTE: Final = timedelta(minutes=1)
_MACROS: Final = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
_MONTHS: Final = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS: Final = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_CRON_FIELDS: Final = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS),
)
_SEARCH_DAYS: Final = 9 * 366  # every valid cron expression fires within 8 years (29 February)


def _weekday(text: str) -> int:
    """Monday = 0 ... Sunday = 6, from a full or three-letter English name."""
    t = text.strip().lower()
    for i, name in enumerate(WEEKDAYS):
        if t in (name, name[:3]):
            return i
    raise _Invalid("on", f'on = {text!r}: expected a day of the week, e.g. "sunday"')


def _period(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([mhdw])\s*", text)
    if not m or int(m.group(1)) == 0:
        raise _Invalid(
            "every", f'every = {text!r}: expected a positive number and a unit (m, h, d or w), e.g. "6h" or "1d"'
        )
    return int(m.group(1)) * _UNITS[m.group(2)]


def _time_of_day(text: str) -> int:
    m = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*", text)
    if not m or int(m.group(1)) > 23 or int(m.group(2)) > 59:
        raise _Invalid("at", f'at = {text!r}: expected a UTC time of day HH:MM, e.g. "02:00"')
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60


def _cron_value(token: str, lo: int, hi: int, names: Sequence[str], field: str, expr: str) -> int:
    if token.isdigit():
        value = int(token)
    elif token.lower() in names:
        value = names.index(token.lower()) + lo
    else:
        raise _Invalid("cron", f"cron = {expr!r}: {token!r} is not a valid {field}")
    if not lo <= value <= hi:
        raise _Invalid("cron", f"cron = {expr!r}: {field} {value} is out of range ({lo}-{hi})")
    return value


def _cron_field(text: str, lo: int, hi: int, names: Sequence[str], field: str, expr: str) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        body, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise _Invalid("cron", f"cron = {expr!r}: bad step {step_text!r} in the {field} field")
            step = int(step_text)
        if body == "*":
            start, end = lo, hi
        elif "-" in body:
            a, b = body.split("-", 1)
            start = _cron_value(a, lo, hi, names, field, expr)
            end = _cron_value(b, lo, hi, names, field, expr)
            if start > end:
                raise _Invalid("cron", f"cron = {expr!r}: the range {body!r} in the {field} field runs backwards")
        else:
            start = _cron_value(body, lo, hi, names, field, expr)
            end = hi if slash else start
        values.update(range(start, end + 1, step))
    return frozenset(values)


@attrs.frozen
class _Cron:
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # cron numbering: Sunday = 0
    any_day: bool  # day of month is '*'
    any_weekday: bool  # day of week is '*'

    @classmethod
    def parse(cls, expr: str) -> _Cron:
        text = _MACROS.get(expr.strip().lower(), expr)
        fields = text.split()
        if len(fields) != 5:
            raise _Invalid(
                "cron",
                f"cron = {expr!r}: expected 5 fields (minute hour day-of-month month day-of-week), e.g. "
                '"0 3 * * 0", or @hourly, @daily, @weekly, @monthly, @yearly',
            )
        sets = [
            _cron_field(f, lo, hi, names, name, expr)
            for f, (name, lo, hi, names) in zip(fields, _CRON_FIELDS, strict=True)
        ]
        weekdays = frozenset(d % 7 for d in sets[4])
        return cls(
            minutes=tuple(sorted(sets[0])),
            hours=tuple(sorted(sets[1])),
            days=sets[2],
            months=sets[3],
            weekdays=weekdays,
            any_day=fields[2].startswith("*"),
            any_weekday=fields[4].startswith("*"),
        )

    def day_matches(self, d: date) -> bool:
        if d.month not in self.months:
            return False
        by_day = d.day in self.days
        by_weekday = (d.weekday() + 1) % 7 in self.weekdays
        if not self.any_day and not self.any_weekday:
            return by_day or by_weekday  # as in every cron: either one, when both are restricted
        return by_day and by_weekday

    def previous(self, now: datetime) -> datetime | None:
        """The latest fire time at or before ``now``."""
        t = now.replace(second=0, microsecond=0)
        for back in range(_SEARCH_DAYS):
            d = t.date() - timedelta(days=back)
            if not self.day_matches(d):
                continue
            for h in reversed(self.hours):
                if back == 0 and h > t.hour:
                    continue
                mins = [m for m in self.minutes if back > 0 or h < t.hour or m <= t.minute]
                if mins:
                    return datetime(d.year, d.month, d.day, h, mins[-1], tzinfo=UTC)
        return None

    def following(self, now: datetime) -> datetime | None:
        """The earliest fire time after ``now``."""
        t = now.replace(second=0, microsecond=0) + _MINUTE
        for ahead in range(_SEARCH_DAYS):
            d = t.date() + timedelta(days=ahead)
            if not self.day_matches(d):
                continue
            for h in self.hours:
                if ahead == 0 and h < t.hour:
                    continue
                mins = [m for m in self.minutes if ahead > 0 or h > t.hour or m >= t.minute]
                if mins:
                    return datetime(d.year, d.month, d.day, h, mins[0], tzinfo=UTC)
        return None


def _utc(value: datetime) -> datetime:
    """Aware datetimes are converted to UTC; naive ones are taken as UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@attrs.frozen(kw_only=True)
class Schedule:
    """When a job fires, in UTC: ``every`` (``"30m"``, ``"6h"``, ``"1d"``, ``"7d"``, ``"2w"``) with an optional
    time of day ``at`` (``"02:00"``) and, for whole weeks, a day ``on`` (``"sunday"``); or a 5-field ``cron``
    expression (minute hour day-of-month month day-of-week, with ``*``, lists, ranges, steps and names).

    ``every`` fires at the multiples of the period counted from Monday 1970-01-05 00:00 UTC, shifted by ``at``
    and ``on``: ``every = "1d", at = "02:00"`` fires at 02:00 each day, ``every = "6h"`` at 00:00, 06:00, 12:00
    and 18:00, ``every = "7d"`` on Mondays at 00:00 unless ``on`` says another day.
    """

    every: str | None = None
    at: str | None = None
    on: str | None = None
    cron: str | None = None
    _period_s: int = attrs.field(init=False, default=0, eq=False, repr=False)
    _anchor: datetime = attrs.field(init=False, default=_MONDAY, eq=False, repr=False)
    _cron: _Cron | None = attrs.field(init=False, default=None, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if (self.every is None) == (self.cron is None):
            raise _Invalid("every", 'a schedule needs exactly one of every (e.g. "1d") or cron (e.g. "0 3 * * 0")')
        if self.cron is not None:
            if self.at is not None or self.on is not None:
                key = "at" if self.at is not None else "on"
                raise _Invalid(key, f"{key} goes with every, not with cron: put the time in the cron expression")
            parsed = _Cron.parse(self.cron)
            if parsed.previous(datetime(2040, 1, 1, tzinfo=UTC)) is None:
                raise _Invalid("cron", f"cron = {self.cron!r} never fires (no such day): fix the day or month")
            object.__setattr__(self, "_cron", parsed)
            return
        assert self.every is not None
        period = _period(self.every)
        offset = _time_of_day(self.at) if self.at is not None else 0
        if self.on is not None:
            if period % _UNITS["w"]:
                raise _Invalid(
                    "on", f'on = {self.on!r} needs a period of whole weeks (every = "7d"), not {self.every!r}'
                )
            offset += _weekday(self.on) * _UNITS["d"]
        object.__setattr__(self, "_period_s", period)
        object.__setattr__(self, "_anchor", _MONDAY + timedelta(seconds=offset))

    def previous(self, now: datetime) -> datetime:
        """The latest fire time at or before ``now``."""
        now = _utc(now)
        if self._cron is not None:
            found = self._cron.previous(now)
            if found is None:  # pragma: no cover - excluded when the schedule is made
                raise ConfigurationError(f"cron = {self.cron!r} does not fire in the 9 years before {now}")
            return found
        period = timedelta(seconds=self._period_s)
        return self._anchor + ((now - self._anchor) // period) * period

    def following(self, now: datetime) -> datetime:
        """The earliest fire time after ``now``."""
        now = _utc(now)
        if self._cron is not None:
            found = self._cron.following(now)
            if found is None:  # pragma: no cover
                raise ConfigurationError(f"cron = {self.cron!r} does not fire in the 9 years after {now}")
            return found
        return self.previous(now) + timedelta(seconds=self._period_s)

    def describe(self) -> str:
        if self.cron is not None:
            return f"cron {self.cron} (UTC)"
        text = f"every {self.every}"
        if self.on is not None:
            text += f" on {WEEKDAYS[_weekday(self.on)]}"
        if self.at is not None:
            text += f" at {self.at}"
        return text + " UTC" if (self.at is not None or self.on is not None) else text

    def to_dict(self) -> dict[str, str]:
        return {k: v for k, v in (("every", self.every), ("at", self.at), ("on", self.on), ("cron", self.cron)) if v}


# -- jobs ----------------------------------------------------------------------------------------------------

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


def _backup_class(kind: str) -> type[Any]:
    if kind == "base":
        from ..physical.backup import BaseBackup

        return BaseBackup
    from ..logical.backup import ClusterBackup, GlobalsBackup, LogicalBackup

    return {"logical": LogicalBackup, "globals": GlobalsBackup, "cluster": ClusterBackup}[kind]


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


def _unknown(key: str, where: str, valid: Iterable[str]) -> _Invalid:
    names = sorted(valid)
    close = difflib.get_close_matches(key, names, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return _Invalid(key, f"unknown option {key!r} {where}: {hint}valid ones are {', '.join(names)}")


def _check_table(where: str, options: Mapping[str, Any], spec: Mapping[str, str]) -> None:
    for key, value in options.items():
        if key not in spec:
            raise _unknown(key, where, spec)
        if not _is(value, spec[key]):
            raise _Invalid(key, f"{key} = {value!r}: expected {spec[key]}")


def _backup_object(kind: str, options: Mapping[str, Any]) -> Any:
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
        from .._redact import redact_url

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


# -- loading a TOML file --------------------------------------------------------------------------------------

_TOP_KEYS: Final = ("name", "repository", "copies", "retention", "state_dir", "jobs")
_SCHEDULE_KEYS: Final = ("every", "at", "on", "cron")
# Storage options that look like credentials (as storage.py judges them): refused in a policy file.


def _table_of(line: str) -> tuple[str, ...] | None:
    """The table a ``[a.b]`` or ``[[a]]`` header line opens (None for other lines)."""
    m = re.match(r"^\s*\[\[?\s*([^\[\]]+?)\s*\]\]?\s*(#.*)?$", line)
    if not m:
        return None
    return tuple(part.strip().strip("\"'") for part in m[1].split("."))


def _locate(text: str, table: tuple[str, ...], key: str | None) -> int | None:
    """The line (1-based) of ``key`` in ``[table]``; the table's header when key is None or not found there."""
    current: tuple[str, ...] = ()
    header = None
    key_re = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=") if key else None
    for number, line in enumerate(text.splitlines(), 1):
        found = _table_of(line)
        if found is not None:
            current = found
            if current == table and header is None:
                header = number
            continue
        if key_re is not None and current == table and key_re.match(line):
            return number
    return header


class _Loader:
    """Turns the parsed TOML into a `BackupPolicy`; every error names the file, the line when it can, the key."""

    def __init__(self, path: str, text: str) -> None:
        self.path, self.text = path, text

    def error(self, table: tuple[str, ...], key: str | None, message: str) -> ConfigurationError:
        line = _locate(self.text, table, key)
        where = f"{self.path}, line {line}" if line else self.path
        return ConfigurationError(f"{where}: {message}")

    def repository(self, value: Any, key: str) -> RepositoryRef:
        """``repository`` or one of ``copies``: a URL, or a table with ``url`` and ``storage_options``."""
        if isinstance(value, str):
            return RepositoryRef(url=value)
        if not isinstance(value, dict) or not isinstance(value.get("url"), str):
            raise self.error((), key, f'{key}: expected a URL such as "s3://bucket/prefix", or a table with url = ...')
        table = (key,)
        for extra in sorted(set(value) - {"url", "storage_options"}):
            raise self.error(table, extra, f"[{key}] unknown key {extra!r}: use url and storage_options")
        options = value.get("storage_options", {})
        if not isinstance(options, dict):
            raise self.error(table, "storage_options", f"[{key}] storage_options: expected a table of fsspec options")
        for name in options:
            if is_secret_option(name):
                raise self.error(
                    table,
                    "storage_options",
                    f"[{key}] storage option {name!r} looks like a credential: keep credentials out of the policy "
                    "file and set them in the environment of run-policy instead "
                    f"(FSSPEC_<PROTOCOL>_{name.upper()}, e.g. FSSPEC_S3_{name.upper()})",
                )
        return RepositoryRef(url=value["url"], storage_options=options)

    def job(self, name: str, body: Any) -> Job:
        table = ("jobs", name)
        if not isinstance(body, dict):
            raise self.error(("jobs",), name, f'jobs.{name}: expected a table: [jobs.{name}] kind = "logical" ...')
        try:
            if "kind" not in body:
                raise _Invalid(None, f'no kind: add kind = "logical" (or {", ".join(JOB_KINDS[1:])})')
            for key in (*_SCHEDULE_KEYS, "kind"):
                if key in body and not isinstance(body[key], str):
                    raise _Invalid(key, f"{key} = {body[key]!r}: expected a string")
            if not isinstance(body.get("enabled", True), bool):
                raise _Invalid("enabled", "enabled: expected true or false")
            options = {k: v for k, v in body.items() if k not in (*_SCHEDULE_KEYS, "kind", "enabled")}
            for key in _CONNINFO_OPTIONS:
                if isinstance(options.get(key), str) and _has_password(options[key]):
                    raise _Invalid(
                        key,
                        f"{key} carries a password: keep it out of the policy file and give it to run-policy "
                        "through PGPASSWORD, PGPASSFILE or ~/.pgpass",
                    )
            _check_kind(body["kind"])
            schedule = Schedule(**{k: body[k] for k in _SCHEDULE_KEYS if k in body})
            return Job(
                name=name, kind=body["kind"], schedule=schedule, options=options, enabled=body.get("enabled", True)
            )
        except _Invalid as e:
            message = str(e).removeprefix(f"job {name!r}: ")
            raise self.error(table, e.key, f"[jobs.{name}] {message}") from None
        except ConfigurationError as e:
            raise self.error(table, None, f"[jobs.{name}] {e}") from None

    def retention(self, value: Any) -> RetentionPolicy:
        if not isinstance(value, dict):
            raise self.error((), "retention", 'retention: expected a table: [retention] preset = "production"')
        try:
            _check_table("in [retention]", value, _RETENTION_OPTIONS)
            return retention_from(value)
        except _Invalid as e:
            raise self.error(("retention",), e.key, f"[retention] {e}") from None

    def policy(self, data: dict[str, Any]) -> BackupPolicy:
        for key in data:
            if key not in _TOP_KEYS:
                close = difflib.get_close_matches(key, _TOP_KEYS, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise self.error((), key, f"unknown key {key!r}: {hint}valid ones are {', '.join(_TOP_KEYS)}")
        name = data.get("name", Path(self.path).stem)
        if not isinstance(name, str) or not _NAME.match(name):
            raise self.error((), "name", f"name = {name!r}: use letters, digits, '.', '_' and '-'")
        if "repository" in data:
            repository = self.repository(data["repository"], "repository")
        elif os.environ.get("PGRECOVERY_REPO"):
            repository = RepositoryRef(url=os.environ["PGRECOVERY_REPO"])
        else:
            raise self.error(
                (), None, 'no repository: add repository = "s3://bucket/prefix" at the top (or set PGRECOVERY_REPO)'
            )
        copies = data.get("copies", [])
        if not isinstance(copies, list):
            raise self.error((), "copies", 'copies: expected a list, e.g. copies = ["s3://offsite/prod"]')
        retention = self.retention(data["retention"]) if "retention" in data else None
        state_dir = data.get("state_dir")
        if state_dir is not None:
            if not isinstance(state_dir, str):
                raise self.error((), "state_dir", "state_dir: expected a directory path")
            state_dir = os.path.abspath(Path(self.path).parent / Path(state_dir).expanduser())
        jobs = data.get("jobs", {})
        if not isinstance(jobs, dict):
            raise self.error((), "jobs", 'jobs: expected tables: [jobs.nightly] kind = "logical" ...')
        parsed = [self.job(job_name, body) for job_name, body in jobs.items()]
        try:
            return BackupPolicy(
                name=name,
                repository=repository,
                copies=[self.repository(c, "copies") for c in copies],
                jobs=parsed,
                retention=retention,
                state_dir=state_dir,
                source=self.path,
            )
        except _Invalid as e:
            table = next((("jobs", j.name) for j in parsed if f"job {j.name!r}" in str(e)), ())
            raise self.error(table, e.key, str(e)) from None


def _has_password(conninfo: str) -> bool:
    from ..pgtools import conninfo_dict

    try:
        return "password" in conninfo_dict(conninfo)
    except ConfigurationError:
        return bool(re.search(r"password\s*=", conninfo, re.I))


def load_policy(path: str | os.PathLike[str]) -> BackupPolicy:
    """Read a policy file (TOML, see docs/policy.md). Errors name the file, the line and the key, and the fix."""
    where = os.fspath(path)
    try:
        text = Path(where).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigurationError(f"cannot read the policy file {where}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigurationError(f"{where}: not UTF-8 text ({e.reason}): save it as UTF-8") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigurationError(f"{where}: {e}: fix the TOML syntax there") from None
    return _Loader(where, text).policy(data)


# -- state and lock -------------------------------------------------------------------------------------------


def default_state_dir() -> Path:
    """``$PGRECOVERY_STATE_DIR``; else ``/var/lib/pgrecovery`` for root, ``$XDG_STATE_HOME/pgrecovery`` (default
    ``~/.local/state/pgrecovery``) for other users."""
    explicit = os.environ.get("PGRECOVERY_STATE_DIR")
    if explicit:
        return Path(explicit)
    if os.geteuid() == 0:
        return Path("/var/lib/pgrecovery")
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "pgrecovery"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return _utc(datetime.fromisoformat(value))
    except ValueError:
        return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``path`` so that a reader sees the old or the new content, never a mix: temporary file in the same
    directory, fsync, rename over, fsync of the directory."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


class _State:
    """The state file: per job, the last success, the last failure and the count of failures in a row."""

    def __init__(self, path: Path, policy: str) -> None:
        self.path, self.policy = path, policy
        self.jobs: dict[str, dict[str, Any]] = {}

    def load(self) -> _State:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return self
        except OSError as e:
            raise ConfigurationError(f"cannot read the state file {self.path}: {e.strerror or e}") from None
        fix = "delete it to start over (backup jobs then go by the newest backups in the repository)"
        try:
            data = json.loads(raw)
        except ValueError as e:
            raise ConfigurationError(f"the state file {self.path} is not valid JSON ({e}): {fix}") from None
        if not isinstance(data, dict) or not isinstance(data.get("jobs"), dict):
            raise ConfigurationError(f"the state file {self.path} is not a pgrecovery policy state: {fix}")
        if int(data.get("version", 0)) > STATE_VERSION:
            raise ConfigurationError(
                f"the state file {self.path} was written by a newer pgrecovery (version {data['version']}): upgrade"
            )
        self.jobs = {k: v for k, v in data["jobs"].items() if isinstance(v, dict)}
        return self

    def save(self) -> None:
        data = {"version": STATE_VERSION, "policy": self.policy, "jobs": self.jobs}
        try:
            write_atomically(self.path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
        except OSError as e:
            raise ConfigurationError(
                f"cannot write the state file {self.path}: {e.strerror or e}; check the free space and permissions "
                "of the state directory (the previous state is intact)"
            ) from None

    def last_success(self, job: str) -> tuple[datetime | None, str | None]:
        entry = self.jobs.get(job, {}).get("last_success") or {}
        return _parse_time(entry.get("at")), entry.get("backup_id")

    def last_failure(self, job: str) -> tuple[datetime | None, str | None]:
        entry = self.jobs.get(job, {}).get("last_failure") or {}
        return _parse_time(entry.get("at")), entry.get("error")

    def record(self, run: JobRun) -> None:
        entry = self.jobs.setdefault(run.name, {})
        entry["kind"] = run.kind
        entry["last_attempt"] = _iso(run.started_at)
        if run.status == "succeeded":
            entry["last_success"] = {
                "at": _iso(run.started_at),
                "seconds": round(run.seconds or 0.0, 3),
                "backup_id": run.backup_id,
            }
            entry["failures"] = 0
        else:
            entry["last_failure"] = {
                "at": _iso(run.started_at),
                "seconds": round(run.seconds or 0.0, 3),
                "error": run.error,
            }
            entry["failures"] = int(entry.get("failures", 0)) + 1


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive, non-blocking ``flock`` on ``path`` for the duration; refused with `PolicyLocked`."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PolicyLocked(_holder(fd, path)) from None
        except OSError as e:
            raise ConfigurationError(
                f"cannot lock {path}: {e.strerror or e}; put the state directory on a local filesystem"
            ) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": datetime.now(UTC).isoformat()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock (also when the process dies)


def _holder(fd: int, path: Path) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        info = {}
    since = info.get("since", "an unknown time")
    pid = info.get("pid", "unknown")
    host = info.get("host")
    elsewhere = f" on {host}" if host and host != socket.gethostname() else ""
    return (
        f"another run-policy holds the lock since {since} (pid {pid}{elsewhere}): {path}; "
        "this call did nothing. The lock goes when that run ends; if it hangs, stop that process"
    )


# -- results --------------------------------------------------------------------------------------------------

Status = Literal["succeeded", "failed", "due", "not-due", "disabled"]


@attrs.frozen(kw_only=True)
class JobRun:
    """One job in a `run_policy` call: whether it was due and why, and (unless a dry run) how its run went."""

    name: str
    kind: str
    schedule: str
    status: Status
    reason: str
    scheduled_at: datetime | None = None
    next_at: datetime | None = None
    last_success: datetime | None = None
    started_at: datetime | None = None
    seconds: float | None = None
    backup_id: str | None = None
    error: str | None = None
    detail: Mapping[str, Any] = attrs.field(factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "schedule": self.schedule,
            "status": self.status,
            "reason": self.reason,
            "scheduled_at": _iso(self.scheduled_at),
            "next_at": _iso(self.next_at),
            "last_success": _iso(self.last_success),
            "started_at": _iso(self.started_at),
            "seconds": round(self.seconds, 3) if self.seconds is not None else None,
            "backup_id": self.backup_id,
            "error": self.error,
            "detail": dict(self.detail),
        }


@attrs.frozen(kw_only=True)
class PolicyRun:
    """What a `run_policy` call found and did. ``ok``: no job failed."""

    policy: str
    source: str | None
    now: datetime
    dry_run: bool
    state_file: str
    jobs: tuple[JobRun, ...]

    @property
    def ran(self) -> list[JobRun]:
        return [j for j in self.jobs if j.status in ("succeeded", "failed")]

    @property
    def failed(self) -> list[JobRun]:
        return [j for j in self.jobs if j.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "source": self.source,
            "now": self.now.isoformat(),
            "dry_run": self.dry_run,
            "state_file": self.state_file,
            "ok": self.ok,
            "ran": len(self.ran),
            "failed": len(self.failed),
            "jobs": [j.to_dict() for j in self.jobs],
        }


# -- running --------------------------------------------------------------------------------------------------


def _fmt(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC")


def _safe(text: str) -> str:
    return scrub(text)


def _database_of(conninfo: str) -> str | None:
    """The database a logical backup job dumps, as libpq would choose it (None when it cannot be told)."""
    from ..pgtools import conninfo_dict

    try:
        parts = conninfo_dict(conninfo)
    except ConfigurationError:
        return None
    user = parts.get("user") or os.environ.get("PGUSER")
    if not user:
        with contextlib.suppress(Exception):
            user = getpass.getuser()
    return parts.get("dbname") or os.environ.get("PGDATABASE") or user


class _Run:
    """One `run_policy` call: the repositories it opened, the state, the clock."""

    def __init__(self, policy: BackupPolicy, state: _State, now: datetime, fake_clock: bool) -> None:
        self.policy, self.state, self.now, self.fake_clock = policy, state, now, fake_clock
        self._repos: dict[str, Repository] = {}
        self._t0 = time.monotonic()

    def clock(self) -> datetime:
        return self.now + timedelta(seconds=time.monotonic() - self._t0)

    def repo(self, ref: RepositoryRef) -> Repository:
        if ref.url not in self._repos:
            self._repos[ref.url] = ref.open()
        return self._repos[ref.url]

    # -- is it due? -----------------------------------------------------------------------------------------
    def newest_backup(self, job: Job) -> Any:
        if job.kind not in BACKUP_KINDS:
            return None
        found = self.repo(self.policy.repository).backups(job.kind)
        if job.kind == "logical":
            database = _database_of(str(job.options.get("dbname", "")))
            if database is not None:
                found = [m for m in found if m.database == database]
        return found[-1] if found else None

    def decide(self, job: Job, force: bool) -> JobRun:
        schedule, now = job.schedule, self.now
        scheduled, following = schedule.previous(now), schedule.following(now)

        def verdict(status: Status, reason: str, last: datetime | None = None) -> JobRun:
            return JobRun(
                name=job.name,
                kind=job.kind,
                schedule=schedule.describe(),
                status=status,
                reason=reason,
                scheduled_at=scheduled,
                next_at=following,
                last_success=last,
            )

        if not job.enabled:
            return verdict("disabled", "paused: enabled = false")
        last, _ = self.state.last_success(job.name)
        origin = "last success"
        if last is None:
            try:
                newest = self.newest_backup(job)
            except PgRecoveryError as e:
                return verdict("due", f"never ran here, and the repository cannot be read: {_safe(str(e))}")
            if newest is not None:
                last, origin = newest.started_at, f"newest {job.kind} backup in the repository ({newest.id})"
        failed_at, error = self.state.last_failure(job.name)
        retry = ""
        if failed_at is not None and (last is None or failed_at >= last):
            retry = f"; retrying after the failure at {_fmt(failed_at)}: {error}"
        if force:
            return verdict("due", "forced" + retry, last)
        if last is None:
            what = "no record in the state file"
            if job.kind in BACKUP_KINDS:
                what += f", and no {job.kind} backup in the repository"
            return verdict("due", f"never ran ({what})" + retry)
        if last < scheduled:
            return verdict("due", f"scheduled at {_fmt(scheduled)}; {origin} started {_fmt(last)}" + retry, last)
        return verdict(
            "not-due",
            f"{origin} started {_fmt(last)}, after the scheduled time {_fmt(scheduled)}; next at {_fmt(following)}",
            last,
        )

    # -- running one job -----------------------------------------------------------------------------------
    def execute(self, job: Job, planned: JobRun) -> JobRun:
        started = self.clock()
        t0 = time.monotonic()
        log.info("job %s (%s) started: %s", job.name, job.kind, planned.reason)
        backup_id: str | None = None
        detail: dict[str, Any] = {}
        error: str | None = None
        try:
            backup_id, detail, error = _RUNNERS[job.kind](self, job)
        except PgRecoveryError as e:
            error = _safe(str(e))
        except Exception as e:  # one broken job must not stop the others: recorded and logged
            error = _safe(f"unexpected {type(e).__name__}: {e}")
            log.debug("job %s: traceback", job.name, exc_info=True)
        seconds = time.monotonic() - t0
        if error is None:
            what = _summary(job.kind, detail) if backup_id is None else f"backup {backup_id}"
            what = f"verified {what}" if job.kind == "verify" else what
            log.info("job %s (%s) finished in %.1f s: %s", job.name, job.kind, seconds, what)
        else:
            log.error("job %s (%s) failed after %.1f s: %s", job.name, job.kind, seconds, error)
        return attrs.evolve(
            planned,
            status="failed" if error else "succeeded",
            started_at=started,
            seconds=seconds,
            backup_id=backup_id,
            error=error,
            detail=detail,
        )


def _record_status(table: StatusTable, run: _Run, job: Job, done: JobRun) -> None:
    from .._redact import redact_url
    from ..monitoring.status import RunRecord

    repo = run.policy.repository.url
    record = RunRecord(
        kind=job.kind,
        status="failure" if done.status == "failed" else "success",
        backup_id=done.backup_id,
        file_path=f"{redact_url(repo).rstrip('/')}/backups/{done.backup_id}" if done.backup_id else None,
        size_bytes=done.detail.get("size") if isinstance(done.detail.get("size"), int) else None,
        duration_seconds=round(done.seconds or 0.0, 3),
        error=done.error,
    )
    try:
        table.record(record)
    except PgRecoveryError as e:
        log.warning("could not record job %s in the status table: %s", job.name, e)


def _summary(kind: str, detail: Mapping[str, Any]) -> str:
    if kind == "copy":
        parts = [
            f"{c['target']}: {len(c['backups_copied'])} backup(s), {c['wal_copied']} WAL file(s) copied"
            for c in detail.get("copies", [])
        ]
        return "; ".join(parts) or "nothing to copy"
    if kind == "expire":
        parts = [
            f"{r['repository']}: {len(r['deleted'])} backup(s), {r['wal_removed']} WAL file(s) deleted"
            for r in detail.get("repositories", [])
        ]
        return "; ".join(parts)
    if kind == "wal-cleanup":
        return f"{detail.get('removed', 0)} WAL file(s) deleted"
    return "done"


_Outcome = tuple[str | None, dict[str, Any], str | None]  # (backup id, detail, error)


def _run_backup(run: _Run, job: Job) -> _Outcome:
    m = _backup_object(job.kind, job.options).run(run.repo(run.policy.repository))
    detail: dict[str, Any] = {"size": m.size}
    if m.database:
        detail["database"] = m.database
    return m.id, detail, None


def _run_verify(run: _Run, job: Job) -> _Outcome:
    from ..verify import Verifier

    repo = run.repo(run.policy.repository)
    opts = dict(job.options)
    target = str(opts.pop("backup", "latest"))
    kind = opts.pop("backup_kind", None)
    if target == "latest" and kind:
        target = repo.get("latest", kind).id
    workdir = opts.pop("workdir", None)
    report = Verifier(repo, workdir=workdir).verify(target, **opts)
    detail = {"ok": report.ok, "checks": {c.name: c.status for c in report.checks}}
    error = None
    if not report.ok:
        error = f"backup {report.backup_id} failed verification: " + "; ".join(
            f"{c.name}: {c.detail}" for c in report.failures
        )
    return report.backup_id, detail, error


def _run_copy(run: _Run, job: Job) -> _Outcome:
    from ..copies import copy_repository

    wanted = set(_as_list(job.options.get("to", [])))
    targets = [c for c in run.policy.copies if not wanted or c.url in wanted or c.display_url in wanted]
    source = run.repo(run.policy.repository)
    results: list[dict[str, Any]] = []
    errors: list[str] = []
    for ref in targets:
        try:
            result = copy_repository(
                source,
                run.repo(ref),
                workers=int(job.options.get("workers", 4)),
                wal=bool(job.options.get("wal", True)),
            )
        except PgRecoveryError as e:
            errors.append(f"copy to {ref.display_url}: {_safe(str(e))}")
            results.append({"target": ref.display_url, "ok": False, "error": _safe(str(e))})
            continue
        results.append(result.to_dict())
        if not result.ok:
            problems = [*result.conflicts, *result.corrupt]
            errors.append(
                f"copy to {ref.display_url}: {len(result.conflicts)} conflict(s), {len(result.corrupt)} corrupt "
                f"source object(s), e.g. {problems[0]}"
            )
    return None, {"copies": results}, "; ".join(errors) or None


def _run_expire(run: _Run, job: Job) -> _Outcome:
    from ..retention import expire

    policy = run.policy.retention_of(job)
    assert policy is not None  # BackupPolicy checks it
    refs = [run.policy.repository, *(run.policy.copies if job.options.get("include_copies") else ())]
    results: list[dict[str, Any]] = []
    errors: list[str] = []
    for ref in refs:
        try:
            result = expire(run.repo(ref), policy, now=run.now if run.fake_clock else None)
        except PgRecoveryError as e:
            errors.append(f"expire in {ref.display_url}: {_safe(str(e))}")
            results.append({"repository": ref.display_url, "error": _safe(str(e)), "deleted": [], "wal_removed": 0})
            continue
        results.append(
            {"repository": ref.display_url, "deleted": list(result.deleted), "wal_removed": len(result.wal_removed)}
        )
    return None, {"policy": policy.describe(), "repositories": results}, "; ".join(errors) or None


def _run_wal_cleanup(run: _Run, job: Job) -> _Outcome:
    from ..wal.archiver import WalArchiver

    kwargs: dict[str, Any] = {}
    if "segment_size" in job.options:
        kwargs["segment_size"] = job.options["segment_size"]
    archiver = WalArchiver(run.repo(run.policy.repository), **kwargs)
    removed = archiver.cleanup(job.options.get("keep_from"), job.options.get("timeline"))
    detail: dict[str, Any] = {"removed": len(removed)}
    if removed:
        detail.update(first=removed[0], last=removed[-1])
    return None, detail, None


_RUNNERS: Final[dict[str, Callable[[_Run, Job], _Outcome]]] = {
    **dict.fromkeys(BACKUP_KINDS, _run_backup),
    "verify": _run_verify,
    "copy": _run_copy,
    "expire": _run_expire,
    "wal-cleanup": _run_wal_cleanup,
}


def state_paths(policy: BackupPolicy, state_dir: str | os.PathLike[str] | None = None) -> tuple[Path, Path]:
    """(state file, lock file) of a policy: ``<state_dir>/<name>.state.json`` and ``<state_dir>/<name>.lock``."""
    directory = Path(state_dir) if state_dir is not None else None
    if directory is None:
        directory = Path(policy.state_dir) if policy.state_dir else default_state_dir()
    return directory / f"{policy.name}.state.json", directory / f"{policy.name}.lock"


def run_policy(
    policy: BackupPolicy,
    *,
    now: datetime | None = None,
    dry_run: bool = False,
    state_dir: str | os.PathLike[str] | None = None,
    jobs: Sequence[str] | None = None,
    force: bool = False,
    status_table: StatusTable | None = None,
) -> PolicyRun:
    """Run the jobs of ``policy`` that are due at ``now`` (default: the current time), in the policy's order.

    With ``status_table`` every job that runs is also recorded there (see docs/monitoring.md), so that
    ``pgrecovery check`` and ``metrics`` see it; a failure to record is logged, never fatal.

    ``dry_run`` only says which jobs are due and why (no lock taken, nothing written). ``jobs`` limits the call to
    these job names; ``force`` runs them whether due or not. A failed job is recorded and does not stop the
    others; the result says what happened (it does not raise for a failed job). Raises `PolicyLocked` when
    another call holds the policy's lock, `ConfigurationError` for an unknown job name or a broken state file.
    """
    clock = _utc(now) if now is not None else datetime.now(UTC)
    selected = list(policy.jobs) if jobs is None else [policy.job(name) for name in jobs]
    state_file, lock_file = state_paths(policy, state_dir)
    state = _State(state_file, policy.name)

    def result(found: list[JobRun]) -> PolicyRun:
        return PolicyRun(
            policy=policy.name,
            source=policy.source,
            now=clock,
            dry_run=dry_run,
            state_file=str(state_file),
            jobs=tuple(found),
        )

    if dry_run:
        run = _Run(policy, state.load(), clock, now is not None)
        return result([run.decide(job, force) for job in selected])
    try:
        state_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigurationError(
            f"cannot create the state directory {state_file.parent}: {e.strerror or e}; choose another one "
            "(state_dir in the policy, --state-dir, or PGRECOVERY_STATE_DIR)"
        ) from None
    found: list[JobRun] = []
    with _lock(lock_file):
        run = _Run(policy, state.load(), clock, now is not None)
        for job in selected:
            planned = run.decide(job, force)
            if planned.status != "due":
                log.debug("job %s (%s): %s", job.name, job.kind, planned.reason)
                found.append(planned)
                continue
            done = run.execute(job, planned)
            if status_table is not None:
                _record_status(status_table, run, job, done)
            state.record(done)
            state.save()
            found.append(done)
    return result(found)


__all__ = [
    "BACKUP_KINDS",
    "JOB_KINDS",
    "BackupPolicy",
    "Job",
    "JobRun",
    "PolicyRun",
    "RepositoryRef",
    "Schedule",
    "default_state_dir",
    "load_policy",
    "retention_from",
    "run_policy",
    "state_paths",
    "write_atomically",
]
