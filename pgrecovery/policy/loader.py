"""Reading a policy file (TOML, see docs/policy.md): every error names the file, the line and the key."""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from .._redact import is_secret_option
from ..errors import ConfigurationError
from ._invalid import _Invalid
from .jobs import (
    _CONNINFO_OPTIONS,
    _NAME,
    _RETENTION_OPTIONS,
    JOB_KINDS,
    BackupPolicy,
    Job,
    RepositoryRef,
    _check_kind,
    _check_table,
    retention_from,
)
from .schedule import Schedule

if TYPE_CHECKING:
    from ..retention import RetentionPolicy


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
