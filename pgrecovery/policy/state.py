"""A policy's local state: the state file (per job, the last success and failure), written atomically, and the
lock that keeps to one run at a time."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from .._fsutil import write_atomic
from ..errors import ConfigurationError, PolicyLocked
from .results import JobRun, _iso
from .schedule import _utc

STATE_VERSION: Final = 1


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


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return _utc(datetime.fromisoformat(value))
    except ValueError:
        return None


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``path`` so that a reader sees the old or the new content, never a mix: temporary file in the same
    directory, fsync, rename over, fsync of the directory (mode 0600)."""
    write_atomic(os.fspath(path), data, mode=0o600)


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
