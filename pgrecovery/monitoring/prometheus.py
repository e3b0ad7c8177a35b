"""Prometheus metrics: everything the sources say, in the text exposition format, and a textfile writer for node
exporter's textfile collector.

>>> write_textfile("/var/lib/node_exporter/pgrecovery.prom", metrics(repo))      # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

import attrs

from .._fsutil import write_atomic
from ..errors import ConfigurationError, PgRecoveryError
from ._sources import _newest_wal, _Server, _server
from .status import StatusTable
from .thresholds import BACKUP_KINDS

if TYPE_CHECKING:
    from ..manifest import BackupManifest
    from ..repository import Repository

log = logging.getLogger(__package__)  # one logger per area, whichever module of it logs

# Every metric family: type and help text (names get the ``pgrecovery_`` prefix). docs/monitoring.md lists them.
_METRICS: Final[dict[str, tuple[str, str]]] = {
    "backups": ("gauge", "Complete backups in the repository."),
    "backup_stored_bytes": ("gauge", "Bytes stored by the complete backups of this kind."),
    "backup_last_success_timestamp_seconds": ("gauge", "When the newest complete backup finished (Unix time)."),
    "backup_last_duration_seconds": ("gauge", "How long the newest complete backup took."),
    "backup_last_stored_bytes": ("gauge", "Bytes stored for the newest complete backup (after compression)."),
    "backup_last_raw_bytes": ("gauge", "Bytes of the newest complete backup before compression."),
    "wal_newest_object_timestamp_seconds": ("gauge", "When the newest WAL segment in the repository was stored."),
    "wal_archive_lag_seconds": (
        "gauge",
        "How long the oldest finished WAL segment has waited to be archived (0: nothing waits); without a "
        "database, the age of the newest WAL segment in the repository.",
    ),
    "wal_archiving": ("gauge", "1 when this server archives WAL (archive_mode), else 0."),
    "wal_ready_files": ("gauge", "WAL segments waiting to be archived (.ready files)."),
    "wal_archived_total": ("counter", "Segments archived (pg_stat_archiver.archived_count)."),
    "wal_archive_failures_total": ("counter", "Failed archive_command attempts (pg_stat_archiver.failed_count)."),
    "wal_archive_failing": ("gauge", "1 when the latest archive attempt failed, else 0."),
    "wal_last_archived_timestamp_seconds": ("gauge", "When the server last archived a segment (Unix time)."),
    "run_last_status": ("gauge", "1 when the latest recorded run of the kind succeeded, 0 when it failed."),
    "run_last_timestamp_seconds": ("gauge", "When the latest run of the kind was recorded (Unix time)."),
    "run_last_success_timestamp_seconds": ("gauge", "When the latest successful run was recorded (Unix time)."),
    "run_last_duration_seconds": ("gauge", "How long the latest run of the kind took."),
    "verify_last_result": ("gauge", "1 when the latest recorded verification passed, 0 when it failed."),
    "source_up": ("gauge", "1 when the source could be read for these metrics, else 0."),
    "metrics_timestamp_seconds": ("gauge", "When these metrics were gathered (Unix time)."),
}


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


class _Exposition:
    """Metric families in the Prometheus text format (HELP and TYPE once per family, its samples after)."""

    def __init__(self) -> None:
        self._samples: dict[str, list[str]] = {}

    def add(self, name: str, value: float, **labels: str) -> None:
        full = f"pgrecovery_{name}"
        text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
        sample = f"{full}{{{text}}} {_number(value)}" if text else f"{full} {_number(value)}"
        self._samples.setdefault(name, []).append(sample)

    def render(self) -> str:
        out = []
        for name, samples in self._samples.items():
            mtype, help_text = _METRICS[name]
            out += [f"# HELP pgrecovery_{name} {help_text}", f"# TYPE pgrecovery_{name} {mtype}", *samples]
        return "\n".join(out) + "\n"


def _ts(value: datetime) -> float:
    return round(value.timestamp(), 3)


def _backup_metrics(e: _Exposition, repo: Repository, now: datetime, with_wal: bool) -> None:
    by_kind: dict[str, list[BackupManifest]] = {k: [] for k in BACKUP_KINDS}
    for m in repo.backups():
        by_kind.setdefault(m.kind, []).append(m)
    r = repo.display_url
    for kind, found in by_kind.items():
        e.add("backups", len(found), kind=kind, repository=r)
        e.add("backup_stored_bytes", sum(m.size for m in found), kind=kind, repository=r)
    for kind, found in by_kind.items():
        if found:
            m = max(found, key=lambda x: (x.finished_at, x.id))
            e.add("backup_last_success_timestamp_seconds", _ts(m.finished_at), kind=kind, repository=r)
            e.add("backup_last_duration_seconds", round(m.duration, 3), kind=kind, repository=r)
            e.add("backup_last_stored_bytes", m.size, kind=kind, repository=r)
            if m.raw_size is not None:
                e.add("backup_last_raw_bytes", m.raw_size, kind=kind, repository=r)
    newest = _newest_wal(repo) if with_wal else None
    if newest is not None:
        e.add("wal_newest_object_timestamp_seconds", _ts(newest[1]), repository=r)
        e.add("wal_archive_lag_seconds", round(max(now - newest[1], timedelta(0)).total_seconds(), 3), repository=r)


def _server_metrics(e: _Exposition, server: _Server, now: datetime, labels: dict[str, str]) -> None:
    e.add("wal_archiving", server.archiving)
    lag, _ = server.lag(now)
    if lag is not None:
        e.add("wal_archive_lag_seconds", round(lag.total_seconds(), 3), **labels)
    if server.ready_count is not None:
        e.add("wal_ready_files", server.ready_count)
    e.add("wal_archived_total", server.archived_count)
    e.add("wal_archive_failures_total", server.failed_count)
    e.add("wal_archive_failing", server.failing)
    if server.last_archived_time is not None:
        e.add("wal_last_archived_timestamp_seconds", _ts(server.last_archived_time))


def _status_metrics(e: _Exposition, status: StatusTable) -> None:
    latest = status.latest()
    for kind, rec in sorted(latest.items()):
        e.add("run_last_status", rec.ok, kind=kind)
        if rec.created_at is not None:
            e.add("run_last_timestamp_seconds", _ts(rec.created_at), kind=kind)
        if rec.duration_seconds is not None:
            e.add("run_last_duration_seconds", rec.duration_seconds, kind=kind)
    for kind, rec in sorted(status.latest("success").items()):
        if rec.created_at is not None:
            e.add("run_last_success_timestamp_seconds", _ts(rec.created_at), kind=kind)
    if "verify" in latest:
        e.add("verify_last_result", latest["verify"].ok)


@attrs.frozen(kw_only=True)
class Metrics:
    """`collect_metrics`' result: the exposition text and whether each source could be read."""

    text: str
    sources_up: dict[str, bool]

    @property
    def ok(self) -> bool:
        return all(self.sources_up.values())


def metrics(
    repo: Repository | None,
    *,
    dbname: str | None = None,
    status_table: StatusTable | None = None,
    now: datetime | None = None,
) -> str:
    """Everything known, in the Prometheus text exposition format. A source that cannot be read is reported by
    ``pgrecovery_source_up{source="..."} 0`` (and a warning in the log), never by an exception."""
    return collect_metrics(repo, dbname=dbname, status_table=status_table, now=now).text


def collect_metrics(
    repo: Repository | None,
    *,
    dbname: str | None = None,
    status_table: StatusTable | None = None,
    now: datetime | None = None,
) -> Metrics:
    """`metrics`, with which sources could be read."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    e = _Exposition()
    up: dict[str, bool] = {}
    steps: list[tuple[str, Any]] = []
    if repo is not None:
        steps.append(("repository", lambda: _backup_metrics(e, repo, now, with_wal=dbname is None)))
    if dbname is not None:
        labels = {"repository": repo.display_url} if repo is not None else {}
        steps.append(("database", lambda: _server_metrics(e, _server(dbname), now, labels)))
    if status_table is not None:
        steps.append(("status_table", lambda: _status_metrics(e, status_table)))
    for source, step in steps:
        try:
            step()
            up[source] = True
        except PgRecoveryError as err:
            log.warning("metrics: cannot read the %s: %s", source.replace("_", " "), err)
            up[source] = False
    for source, ok in up.items():
        e.add("source_up", ok, source=source)
    e.add("metrics_timestamp_seconds", _ts(now))
    return Metrics(text=e.render(), sources_up=up)


def write_textfile(path: str | os.PathLike[str], text: str) -> None:
    """Replace ``path`` atomically (temporary file in the same directory, fsync, rename, fsync of the directory),
    mode 0644: a collector reading the directory (node exporter's textfile collector) never sees a half-written
    file."""
    target = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(target)
    if not os.path.isdir(directory):
        raise ConfigurationError(f"cannot write {target}: No such file or directory: check that {directory} exists")
    try:
        write_atomic(target, text, mode=0o644)
        os.chmod(target, 0o644)  # whatever the umask: the collector may run as another user
    except OSError as e:
        raise ConfigurationError(f"cannot write {target}: {e.strerror or e}") from None
