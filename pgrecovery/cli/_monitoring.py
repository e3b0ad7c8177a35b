"""CLI verbs for monitoring: ``check`` (Nagios exit codes) and ``metrics`` (Prometheus text format).

``check`` exits 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN; a check that cannot run at all (bad threshold, no
repository, unreachable monitoring database while installing) is UNKNOWN too, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from ._common import add_verb, emit, repository, status_options
from .exitcodes import EXIT_FAILED, EXIT_OK, EXIT_UNKNOWN

if TYPE_CHECKING:
    from ..monitoring import StatusTable, Thresholds
    from ..repository import Repository


def _sources(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-d",
        "--dbname",
        default=None,
        help="the monitored server (libpq string): WAL checks from pg_stat_archiver and archive_status "
        "(default: the newest WAL object in the repository)",
    )
    status_options(p, reading=True)


def add_verbs(verbs: Any, common: argparse.ArgumentParser) -> None:
    """Register ``check`` and ``metrics`` on the main parser's subparsers."""
    chk = add_verb(
        verbs, "check", common, "health checks with Nagios exit codes (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN)"
    )
    _sources(chk)
    chk.add_argument(
        "--age",
        action="append",
        default=[],
        metavar="KIND=WARN/CRIT",
        help="age limits of the newest backup of a kind, e.g. logical=24h/25h, base=7d/8d, globals=off "
        "(repeatable; default logical=24h/25h and base=7d/8d)",
    )
    chk.add_argument("--no-wal", action="store_true", help="skip the WAL archiving checks")
    chk.add_argument("--wal-lag", metavar="WARN/CRIT", help="WAL archive lag limits (default 15m/1h; 'off' disables)")
    chk.add_argument("--ready", metavar="WARN/CRIT", help=".ready backlog limits (default 10/50)")
    chk.add_argument(
        "--failing-critical",
        metavar="DURATION",
        help="archiving failing this long is CRITICAL, less is WARNING (default 10m; 'off': always WARNING)",
    )
    chk.add_argument(
        "--install-sql",
        action="store_true",
        help="create the status table and the pgrecovery_check() SQL function in the monitoring database "
        "(--status-dbname, else --dbname) with these thresholds as defaults, then exit",
    )
    chk.add_argument("--show-sql", action="store_true", help="print the pgrecovery_check() SQL instead")

    met = add_verb(verbs, "metrics", common, "backup and WAL metrics in the Prometheus text format")
    _sources(met)
    met.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write FILE atomically (e.g. for node exporter's textfile collector) instead of printing",
    )


def run(args: argparse.Namespace) -> int:
    from ..errors import PgRecoveryError

    if args.verb == "metrics":
        return _metrics(args)
    try:
        return _check(args)
    except PgRecoveryError as e:
        line = f"UNKNOWN - pgrecovery: {e}"
        emit(args, {"state": "UNKNOWN", "exit_code": EXIT_UNKNOWN, "summary": line, "checks": []}, line)
        return EXIT_UNKNOWN


# -- options -----------------------------------------------------------------------------------------------------


def _pair(text: str, what: str) -> tuple[str, str]:
    from ..errors import ConfigurationError

    if text.strip().lower() in ("off", "none"):
        return "off", "off"
    warn, sep, crit = text.partition("/")
    if not sep:
        raise ConfigurationError(f"{what} expects WARN/CRIT (e.g. 24h/25h, 'off' for one level), got {text!r}")
    return warn, crit


def thresholds_from(args: argparse.Namespace) -> Thresholds:
    """`Thresholds` from the check options (errors are `ConfigurationError`, so the check says UNKNOWN)."""
    from ..errors import ConfigurationError
    from ..monitoring import AgeLimit, CountLimit, Thresholds, parse_duration

    th = Thresholds(wal=not args.no_wal)
    for item in args.age:
        kind, sep, limits = item.partition("=")
        if not sep:
            raise ConfigurationError(f"--age expects KIND=WARN/CRIT (e.g. logical=24h/25h or base=off), got {item!r}")
        warn, crit = _pair(limits, f"--age {kind}")
        limit = AgeLimit(parse_duration(warn), parse_duration(crit))
        th = th.with_backup(kind.strip(), limit if limit.enabled else None)
    if args.wal_lag:
        warn, crit = _pair(args.wal_lag, "--wal-lag")
        th = _evolve(th, wal_lag=AgeLimit(parse_duration(warn), parse_duration(crit)))
    if args.ready:
        warn, crit = _pair(args.ready, "--ready")
        try:
            ready = CountLimit(*(None if v.strip() == "off" else int(v) for v in (warn, crit)))
        except ValueError:
            raise ConfigurationError(f"--ready expects two counts such as 10/50, got {args.ready!r}") from None
        th = _evolve(th, ready=ready)
    if args.failing_critical:
        th = _evolve(th, failing_critical=parse_duration(args.failing_critical))
    return th


def _evolve(th: Thresholds, **changes: Any) -> Thresholds:
    import attrs

    return attrs.evolve(th, **changes)


def _status_table(args: argparse.Namespace, *, fallback: str | None = None) -> StatusTable | None:
    from ..monitoring import DEFAULT_STATUS_TABLE, StatusTable

    conninfo = args.status_dbname if args.status_dbname is not None else fallback
    if conninfo is None:
        return None
    return StatusTable(conninfo, args.status_table or DEFAULT_STATUS_TABLE)


def _maybe_repo(args: argparse.Namespace) -> Repository | None:
    if getattr(args, "repo", None) or os.environ.get("PGRECOVERY_REPO"):
        repo: Repository = repository(args)
        return repo
    return None


# -- verbs -------------------------------------------------------------------------------------------------------


def _check(args: argparse.Namespace) -> int:
    from ..errors import ConfigurationError
    from ..monitoring import check, check_function_sql

    thresholds = thresholds_from(args)
    if args.show_sql:
        from ..monitoring import DEFAULT_STATUS_TABLE

        sys.stdout.write(check_function_sql(args.status_table or DEFAULT_STATUS_TABLE, thresholds))
        return EXIT_OK
    if args.install_sql:
        table = _status_table(args, fallback=args.dbname)
        if table is None:
            raise ConfigurationError("--install-sql needs the monitoring database: pass --status-dbname (or --dbname)")
        name = table.install_check_function(thresholds)
        emit(
            args,
            {"function": name, "status_table": table.where},
            f"installed {name}() beside status table {table.where}: select * from {name}();",
        )
        return EXIT_OK
    repo = _maybe_repo(args)
    status = _status_table(args)
    if repo is None and status is None:
        raise ConfigurationError(
            "nothing to check: pass --repo URL (or set PGRECOVERY_REPO), and/or --status-dbname CONNINFO"
        )
    report = check(repo, dbname=args.dbname, status_table=status, thresholds=thresholds)
    emit(args, report.to_dict(), report.text)
    return report.exit_code


def _metrics(args: argparse.Namespace) -> int:
    """Exit 0 when every source could be read, 1 when one could not (the output says which, with
    ``pgrecovery_source_up 0``, and is written all the same)."""
    from ..errors import ConfigurationError
    from ..monitoring import collect_metrics, write_textfile

    repo = _maybe_repo(args)
    status = _status_table(args)
    if repo is None and status is None and args.dbname is None:
        raise ConfigurationError("no source: pass --repo URL (or set PGRECOVERY_REPO), --dbname or --status-dbname")
    result = collect_metrics(repo, dbname=args.dbname, status_table=status)
    if args.output:
        write_textfile(args.output, result.text)
    else:
        sys.stdout.write(result.text)
    return EXIT_OK if result.ok else EXIT_FAILED
