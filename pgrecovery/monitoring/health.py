"""Health checks with Nagios exit codes: backup ages, WAL archiving (lag, ``.ready`` backlog, failures) and the
latest run of each kind.

>>> report = check(repo, dbname="host=db1", status_table=table)                  # doctest: +SKIP
>>> print(report.text()); raise SystemExit(report.exit_code)                     # doctest: +SKIP

Sources: the repository's catalog (complete backups and their finish times, the newest archived WAL object), the
database's ``pg_stat_archiver`` and ``pg_wal/archive_status`` (through ``pg_ls_archive_statusdir()``), and the
status table (the latest run of each kind). See docs/monitoring.md.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import attrs

from .. import pgtools
from .._redact import redact
from ..errors import PgRecoveryError
from ._sources import _newest_wal, _Server, _server
from .results import CheckResult, CheckState, HealthReport, _seconds
from .status import StatusTable
from .thresholds import AgeLimit, Thresholds, human_duration

if TYPE_CHECKING:
    from ..repository import Repository


def _unknown(name: str, error: BaseException) -> CheckResult:
    return CheckResult(name=name, state=CheckState.UNKNOWN, detail=f"cannot check: {redact(str(error))}")


def _age_result(
    name: str, what: str, limit: AgeLimit, newest: tuple[str, datetime] | None, where: str, now: datetime
) -> CheckResult:
    if newest is None:
        state = CheckState.CRITICAL if limit.critical is not None else CheckState.WARNING
        return CheckResult(name=name, state=state, detail=f"no {what} in {where}")
    label, when = newest
    age = max(now - when, timedelta(0))
    return CheckResult(
        name=name,
        state=limit.state(age),
        detail=f"newest {label} finished {human_duration(age)} ago ({limit.describe()})",
        value=age.total_seconds(),
        warning=_seconds(limit.warning),
        critical=_seconds(limit.critical),
        unit="seconds",
    )


def _backup_checks(
    repo: Repository | None, status: StatusTable | None, thresholds: Thresholds, now: datetime
) -> list[CheckResult]:
    if not thresholds.backups:
        return []
    names = [f"{kind}-backup" for kind in thresholds.backups]
    newest: dict[str, tuple[str, datetime]] = {}
    try:
        if repo is not None:
            where = repo.display_url
            for m in repo.backups():
                if m.kind in thresholds.backups and (m.kind not in newest or m.finished_at > newest[m.kind][1]):
                    newest[m.kind] = (f"backup {m.id}", m.finished_at)
        elif status is not None:
            where = f"status table {status.where}"
            for kind, rec in status.latest("success").items():
                if kind in thresholds.backups and rec.created_at is not None:
                    newest[kind] = (f"successful run{f' ({rec.backup_id})' if rec.backup_id else ''}", rec.created_at)
        else:
            return [
                CheckResult(name=n, state=CheckState.UNKNOWN, detail="no repository (nor status table) to look in")
                for n in names
            ]
    except PgRecoveryError as e:
        return [_unknown(n, e) for n in names]
    return [
        _age_result(f"{kind}-backup", f"complete {kind} backup", limit, newest.get(kind), where, now)
        for kind, limit in thresholds.backups.items()
    ]


def _wal_checks_server(server: _Server, thresholds: Thresholds, now: datetime) -> list[CheckResult]:
    if not server.archiving:
        if server.in_recovery and server.archive_mode == "on":
            return [CheckResult(name="wal-archiving", state=CheckState.OK, detail="standby: the primary archives WAL")]
        return [
            CheckResult(
                name="wal-archiving",
                state=CheckState.CRITICAL,
                detail=f"archive_mode is {server.archive_mode} on the server: no WAL is archived (turn it on, or "
                "disable the WAL checks)",
            )
        ]
    out = []
    lag, how = server.lag(now)
    limit = thresholds.wal_lag
    if lag is None:
        out.append(CheckResult(name="wal-lag", state=CheckState.UNKNOWN, detail=how))
    elif limit.enabled:
        out.append(
            CheckResult(
                name="wal-lag",
                state=limit.state(lag),
                detail=f"{how} ({limit.describe()})" if limit.enabled else how,
                value=lag.total_seconds(),
                warning=_seconds(limit.warning),
                critical=_seconds(limit.critical),
                unit="seconds",
            )
        )
    if server.ready_count is None:
        out.append(
            CheckResult(
                name="wal-ready", state=CheckState.UNKNOWN, detail=f"cannot count .ready files: {server.ready_error}"
            )
        )
    else:
        ready = thresholds.ready
        out.append(
            CheckResult(
                name="wal-ready",
                state=ready.state(server.ready_count),
                detail=f"{server.ready_count} segment(s) waiting to be archived "
                f"(warning at {ready.warning}, critical at {ready.critical})",
                value=float(server.ready_count),
                warning=None if ready.warning is None else float(ready.warning),
                critical=None if ready.critical is None else float(ready.critical),
                unit="files",
            )
        )
    out.append(_failures(server, thresholds, now))
    return out


def _failures(server: _Server, thresholds: Thresholds, now: datetime) -> CheckResult:
    if not server.failing:
        total = f"{server.failed_count} failed attempt(s) in total" if server.failed_count else "no failed attempt"
        return CheckResult(
            name="wal-failures",
            state=CheckState.OK,
            detail=f"{total}; the latest attempt succeeded" if server.last_archived_time else total,
            value=float(server.failed_count),
            unit="failures",
        )
    since = server.oldest_ready or server.last_archived_time
    crit = thresholds.failing_critical
    failing_for = None if since is None else max(now - since, timedelta(0))
    if crit is None:
        state = CheckState.WARNING
    elif failing_for is None or failing_for >= crit:
        state = CheckState.CRITICAL
    else:
        state = CheckState.WARNING
    assert server.last_failed_time is not None
    ago = human_duration(max(now - server.last_failed_time, timedelta(0)))
    duration = "never archived successfully" if failing_for is None else f"failing for {human_duration(failing_for)}"
    limit = "" if crit is None else f" (critical after {human_duration(crit)})"
    return CheckResult(
        name="wal-failures",
        state=state,
        detail=f"archive_command is failing: {server.failed_count} failed attempt(s), the latest on "
        f"{server.last_failed_wal} {ago} ago; {duration}{limit}; see the server log",
        value=float(server.failed_count),
        critical=_seconds(crit),
        unit="failures",
    )


def _wal_check_repository(repo: Repository, thresholds: Thresholds, now: datetime) -> CheckResult:
    limit = thresholds.wal_lag
    newest = _newest_wal(repo)
    if newest is None:
        state = CheckState.CRITICAL if limit.critical is not None else CheckState.WARNING
        return CheckResult(name="wal-lag", state=state, detail=f"no WAL archived in {repo.display_url}")
    name, when = newest
    return attrs.evolve(
        _age_result("wal-lag", "WAL", limit, (f"WAL segment {name}", when), repo.display_url, now),
        detail=f"newest WAL segment {name} stored {human_duration(max(now - when, timedelta(0)))} ago "
        f"({limit.describe()})",
    )


def _run_check(status: StatusTable) -> CheckResult:
    latest = status.latest()
    if not latest:
        return CheckResult(name="last-run", state=CheckState.OK, detail=f"no run recorded yet in {status.where}")
    failed = [r for r in latest.values() if not r.ok]
    if not failed:
        return CheckResult(
            name="last-run",
            state=CheckState.OK,
            detail=f"the latest run of each kind succeeded ({', '.join(sorted(latest))})",
        )
    state = CheckState.CRITICAL if any(r.kind == "verify" for r in failed) else CheckState.WARNING
    parts = []
    for r in sorted(failed, key=lambda r: r.kind):
        when = r.created_at.isoformat(timespec="seconds") if r.created_at else "?"
        parts.append(f"{r.kind} failed at {when}" + (f": {r.error.splitlines()[0]}" if r.error else ""))
    return CheckResult(name="last-run", state=state, detail="; ".join(parts), value=float(len(failed)), unit="runs")


def check(
    repo: Repository | None,
    *,
    dbname: str | None = None,
    status_table: StatusTable | None = None,
    thresholds: Thresholds | None = None,
    now: datetime | None = None,
) -> HealthReport:
    """Run every enabled check; a source that cannot be read makes its checks UNKNOWN, never raises.

    Backup ages come from the repository (or, with ``repo=None``, from the status table's successes). WAL checks
    use the database's archiver statistics when ``dbname`` is given (a libpq string; ``""`` means libpq's
    environment), else the newest WAL object in the repository. The status table adds ``last-run``.
    """
    th = thresholds or Thresholds()
    now = (now or datetime.now(UTC)).astimezone(UTC)
    results = _backup_checks(repo, status_table, th, now)
    if th.wal:
        if dbname is not None:
            try:
                results += _wal_checks_server(_server(dbname), th, now)
            except PgRecoveryError as e:
                results += [_unknown(n, e) for n in ("wal-lag", "wal-ready", "wal-failures")]
        elif repo is not None and th.wal_lag.enabled:
            try:
                results.append(_wal_check_repository(repo, th, now))
            except PgRecoveryError as e:
                results.append(_unknown("wal-lag", e))
    if status_table is not None:
        try:
            results.append(_run_check(status_table))
        except PgRecoveryError as e:
            results.append(_unknown("last-run", e))
    return HealthReport(
        checks=results,
        checked_at=now,
        repository=repo.display_url if repo is not None else None,
        database=pgtools.describe(dbname) if dbname is not None else None,
        status_table=status_table.where if status_table is not None else None,
    )
