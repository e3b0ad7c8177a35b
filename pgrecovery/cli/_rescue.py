"""CLI verbs for rescuing rows and tables from a point in time: ``rescue rows`` and ``rescue table``."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import add_kinds, add_verb, emit, recovery_target, repository, table
from .exitcodes import EXIT_OK


def _target_options(p: argparse.ArgumentParser) -> None:
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-time", help="timestamp with time zone, e.g. '2026-03-15 14:30:00+00'")
    target.add_argument("--target-xid", help="a transaction id")
    target.add_argument("--target-lsn", help="a WAL position, e.g. 0/3000060")
    target.add_argument("--target-name", help="a restore point name")
    p.add_argument("--exclusive", action="store_true", help="stop just before the target (time, xid, lsn)")
    p.add_argument("--backup", metavar="ID", help="base backup to start from (default: chosen for the target)")
    p.add_argument("--sandbox-db", required=True, metavar="DB", help="the database's name in the sandbox (then)")
    p.add_argument(
        "--workdir",
        help="a writable directory for the sandbox, with room for a copy of the cluster, that the server's OS user "
        "can reach (default: the system's temporary directory)",
    )
    p.add_argument("--timeout", type=float, default=600, help="seconds allowed for the sandbox's recovery")


def add_verbs(verbs: Any, common: argparse.ArgumentParser) -> None:
    rescue = add_verb(
        verbs,
        "rescue",
        common,
        "bring back rows or a table as they were at a point in time (through a sandbox recovery)",
    )
    kinds = add_kinds(rescue, "rescue_kind")

    rows = add_verb(
        kinds, "rows", common, "run a SELECT at the target; print the rows or insert them into the live table"
    )
    _target_options(rows)
    rows.add_argument("--query", required=True, metavar="SQL", help="a SELECT run in the sandbox's database")
    rows.add_argument(
        "--param", action="append", default=[], dest="params", metavar="VALUE", help="a value for %%s (repeatable)"
    )
    rows.add_argument("--into", metavar="CONNINFO", help="the live database to insert the rows into")
    rows.add_argument("--table", metavar="SCHEMA.TABLE", help="the live table (needs --into)")
    rows.add_argument(
        "--on-conflict",
        choices=["error", "skip"],
        default="error",
        help="a row that breaks a unique constraint: fail and insert nothing (default), or skip it",
    )

    one = add_verb(kinds, "table", common, "load a table as it was at the target under a new name in the live database")
    one.add_argument("table", help="table name, optionally schema-qualified (schema.table)")
    _target_options(one)
    one.add_argument("--into", required=True, metavar="CONNINFO", help="the live database to load the table into")
    one.add_argument(
        "--new-name", help="name of the loaded table (default: TABLE_at_YYYYmmddHHMMSS or TABLE_recovered)"
    )


def _target(args: argparse.Namespace) -> Any:
    return recovery_target(args, latest_allowed=False)  # argparse makes one of the options required


def run(args: argparse.Namespace) -> int:
    if args.rescue_kind == "rows":
        return _rows(args)
    return _table_at(args)


def _rows(args: argparse.Namespace) -> int:
    from ..errors import ConfigurationError
    from ..recovery.rescue import recover_rows

    if (args.into is None) != (args.table is None):
        raise ConfigurationError("--into and --table go together: the live database and the table to insert into")
    res = recover_rows(
        repository(args),
        _target(args),
        args.query,
        dbname=args.sandbox_db,
        params=args.params or None,
        into=args.into,
        table=args.table,
        on_conflict=args.on_conflict,
        backup_id=args.backup,
        workdir=args.workdir,
        timeout=args.timeout,
    )

    def text() -> str:
        head = (
            f"{res.selected} row(s) at {res.target} (backup {res.backup_id}, replayed to {res.recovered_to}; "
            f"sandbox {res.sandbox_seconds:.1f} s)"
        )
        if res.table is not None:
            return f"{head}: {res.inserted} inserted into {res.table}, {res.skipped} skipped"
        cells = [list(res.columns)] + [["NULL" if v is None else v for v in r] for r in res.text_rows]
        return "\n".join([head, table(cells)])

    emit(args, res.to_dict(), text)
    return EXIT_OK


def _table_at(args: argparse.Namespace) -> int:
    from ..recovery.rescue import recover_table

    res = recover_table(
        repository(args),
        _target(args),
        args.table,
        dbname=args.sandbox_db,
        into=args.into,
        new_name=args.new_name,
        backup_id=args.backup,
        workdir=args.workdir,
        timeout=args.timeout,
    )
    emit(
        args,
        res.to_dict(),
        f"loaded {res.table} as it was at {res.target} into {res.into} as {res.new_table}: {res.rows} row(s) "
        f"(backup {res.backup_id}, replayed to {res.recovered_to}; {res.seconds:.1f} s)",
    )
    return EXIT_OK
