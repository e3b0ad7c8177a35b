"""The command's parser, built verb group by verb group. The verbs kept in their own modules (WAL, copies,
monitoring, retention, rescue, policy) register themselves through their ``add_verbs``.

Building the parser imports nothing beyond the standard library.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from .._version import __version__
from ._common import Parser, add_kinds, add_verb, common_options, dbname_option, flags, status_options, storage_option

# Verbs that live in their own modules (each has add_verbs(verbs, common) and run(args)), by verb name.
EXTENSION_VERBS: dict[str, str] = {
    **dict.fromkeys(
        [
            "wal-push",
            "wal-fetch",
            "wal-prefetch",
            "wal-worker",
            "wal-verify",
            "archiver-status",
            "restore-point",
            "wal-cleanup",
        ],
        "_wal",
    ),
    "copy": "_copies",
    "check-321": "_copies",
    "check": "_monitoring",
    "metrics": "_monitoring",
    "expire": "_retention",
    "rescue": "_rescue",
    "run-policy": "_policy",
    "schedule": "_schedule",
}

# The switches of backup logical and restore logical, passed to the API under the same names (no_owner=...).
LOGICAL_BACKUP_FLAGS = ("data-only", "schema-only", "no-owner", "no-privileges", "no-comments", "clean", "if-exists")
LOGICAL_RESTORE_FLAGS = (
    "clean",
    "if-exists",
    "no-owner",
    "no-privileges",
    "data-only",
    "schema-only",
    "single-transaction",
    "disable-triggers",
)


def _hours(text: str) -> float:
    """A number of hours above 0 (0 would cut uploads under way right now)."""
    try:
        hours = float(text)
    except ValueError:
        hours = -1.0
    if not hours > 0:
        raise argparse.ArgumentTypeError(f"expected a number of hours above 0, got {text!r}")
    return hours


def extension(name: str) -> Any:
    """The module of a verb kept in its own module."""
    return importlib.import_module(f".{name}", __package__)


def build_parser() -> argparse.ArgumentParser:
    common = common_options()
    parser = Parser(prog="pgrecovery", description="PostgreSQL backup and recovery.", parents=[common])
    parser.add_argument("--version", action="version", version=f"pgrecovery {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=Parser)
    verbs.required = True
    _backup_verb(verbs, common)
    _restore_verb(verbs, common)
    _catalog_verbs(verbs, common)
    for name in dict.fromkeys(EXTENSION_VERBS.values()):
        extension(name).add_verbs(verbs, common)
    demo = add_verb(verbs, "demo", common, "run the demonstration in a sandbox")
    demo.add_argument("--workdir", help="directory for the sandbox (default: a new temporary one)")
    return parser


def _backup_verb(verbs: Any, common: argparse.ArgumentParser) -> None:
    kinds = add_kinds(add_verb(verbs, "backup", common, "take a backup"))
    lg = add_verb(kinds, "logical", common, "pg_dump of one database")
    dbname_option(lg)
    lg.add_argument("-F", "--format", choices=["custom", "directory", "plain", "tar"], default="custom")
    lg.add_argument("--compression", choices=["zstd", "gzip", "lz4", "none", "pg_dump"], default="zstd")
    lg.add_argument("--level", type=int, help="compression level")
    lg.add_argument("--threads", type=int, default=0, help="zstd threads (default: one per core)")
    lg.add_argument("-j", "--jobs", type=int, default=1, help="parallel pg_dump jobs (directory format)")
    lg.add_argument("-n", "--schema", action="append", default=[], dest="schemas")
    lg.add_argument("-N", "--exclude-schema", action="append", default=[], dest="exclude_schemas")
    lg.add_argument("-t", "--table", action="append", default=[], dest="tables")
    lg.add_argument("-T", "--exclude-table", action="append", default=[], dest="exclude_tables")
    flags(lg, [*LOGICAL_BACKUP_FLAGS, "create"])
    gl = add_verb(kinds, "globals", common, "roles and tablespaces (pg_dumpall --globals-only)")
    dbname_option(gl)
    flags(gl, ["roles-only", "no-role-passwords"])
    bb = add_verb(kinds, "base", common, "physical base backup of the whole cluster")
    dbname_option(bb)
    bb.add_argument("--method", choices=["local", "stream"], default="local")
    bb.add_argument("--pgdata", help="data directory (local method; default: the server's data_directory)")
    bb.add_argument("--compression", choices=["zstd", "gzip", "lz4", "none"], default="zstd")
    bb.add_argument("--level", type=int, default=1)
    bb.add_argument("--workers", type=int, default=2)
    flags(bb, {"spread-checkpoint": "do not force a fast checkpoint"})
    bb.add_argument("--label", default="pgrecovery")
    bb.add_argument("--parent", help="make it incremental on this base backup (an id or 'latest')")
    bb.add_argument(
        "--incremental",
        choices=["auto", "wal-summaries", "page-lsn", "file"],
        default="auto",
        help="how an incremental backup finds changes: WAL summaries (17+), page LSNs, or whole files",
    )
    bb.add_argument(
        "--primary-dbname", help="from a standby: the primary, asked to switch WAL so the backup ends sooner"
    )
    cl = add_verb(kinds, "cluster", common, "globals plus every database")
    dbname_option(cl)
    cl.add_argument("--exclude-database", action="append", default=[], dest="exclude_databases")
    for p in (lg, gl, bb, cl):
        status_options(p)


def _restore_verb(verbs: Any, common: argparse.ArgumentParser) -> None:
    kinds = add_kinds(add_verb(verbs, "restore", common, "restore a backup"))
    rl = add_verb(kinds, "logical", common, "restore a logical, globals or cluster backup")
    rl.add_argument("id", help="backup id or 'latest'")
    dbname_option(rl, "target database (or server, for globals and cluster backups)")
    flags(rl, {"create": "create the target database first"})
    rl.add_argument("-n", "--schema", action="append", default=[], dest="schemas")
    rl.add_argument("-t", "--table", action="append", default=[], dest="tables")
    rl.add_argument("-L", "--use-list", metavar="FILE", help="restore only the entries in FILE (edited `contents`)")
    rl.add_argument("-j", "--jobs", type=int, default=1)
    flags(rl, LOGICAL_RESTORE_FLAGS)
    flags(rl, {"no-verify-first": "skip re-reading the stored files before restoring"})
    _restore_base_kind(kinds, common)
    rt = add_verb(kinds, "table", common, "recover one table from a logical backup")
    rt.add_argument("id", help="backup id or 'latest'")
    rt.add_argument("table", help="table name, optionally schema-qualified (schema.table)")
    dbname_option(rt, "target database")
    rt.add_argument("--new-name", help="load under this name instead (the existing table is left alone)")
    rt.add_argument("--sql", metavar="FILE", help="write the table's SQL to FILE ('-' for stdout) instead of restoring")
    flags(rt, {"no-data": "definition only", "no-definition": "data only (into an existing table)"})


_RESTORE_BASE_FLAGS = {
    "standby": "write standby.signal instead of recovery.signal",
    "run": "start the server and wait until the target is reached",
    "no-archive": "archive_mode = off in the restored cluster, for a copy to look at (default: it keeps the "
    "backup's archiving and archives its new timeline into the repository, as a replacement server should)",
}


def _restore_base_kind(kinds: Any, common: argparse.ArgumentParser) -> None:
    rb = add_verb(kinds, "base", common, "restore a base backup, optionally to a point in time")
    rb.add_argument("id", help="backup id or 'latest' (default: chosen for the target)", nargs="?")
    rb.add_argument("--pgdata", required=True, help="data directory to create")
    target = rb.add_mutually_exclusive_group()
    target.add_argument("--target-time", help="timestamp with time zone, e.g. '2026-03-15 14:30:00+00'")
    target.add_argument("--target-xid")
    target.add_argument("--target-name", help="a restore point name")
    target.add_argument("--target-lsn")
    target.add_argument("--target-immediate", action="store_true", help="stop as soon as the backup is consistent")
    flags(rb, {"exclusive": "stop just before the target (time, xid, lsn)"})
    rb.add_argument("--target-action", choices=["promote", "pause", "shutdown"], default="promote")
    rb.add_argument("--target-timeline", default="latest", help="latest, current or a timeline number")
    flags(
        rb,
        {
            "overwrite": "empty a non-empty --pgdata first",
            "delta": "rewrite only files whose checksum differs from the backup",
        },
    )
    rb.add_argument(
        "--tablespace-map",
        action="append",
        type=storage_option,
        default=[],
        metavar="OID=DIR",
        help="restore the tablespace with this OID (see `show ID --json`) into DIR (repeatable)",
    )
    flags(rb, _RESTORE_BASE_FLAGS)


def _catalog_verbs(verbs: Any, common: argparse.ArgumentParser) -> None:
    ls = add_verb(verbs, "list", common, "list complete backups")
    ls.add_argument("--kind", choices=["logical", "globals", "cluster", "base"])
    flags(ls, {"incomplete": "also list unfinished / interrupted backups"})
    add_verb(verbs, "show", common, "show a backup's manifest").add_argument("id")
    contents = add_verb(verbs, "contents", common, "list a logical backup's table of contents")
    contents.add_argument("id")
    contents.add_argument("--table", help="only the entries that recreate this table")
    verify = add_verb(verbs, "verify", common, "verify a backup")
    verify.add_argument("id", nargs="?", default="latest")
    flags(verify, {"drill": "restore it into a sandbox and count rows"})
    verify.add_argument("--drill-dbname", help="run the drill on this server instead of a sandbox cluster")
    verify.add_argument(
        "--drill-port", metavar="PORT|LOW-HIGH", help="the port, or range of ports, the drill's sandbox server may use"
    )
    verify.add_argument("--source-dbname", help="compare row counts with this database (default: the recorded source)")
    verify.add_argument("-j", "--jobs", type=int, default=1)
    status_options(verify)
    delete = add_verb(verbs, "delete", common, "delete a backup")
    delete.add_argument("id")
    flags(delete, {"with-dependents": "also delete incremental backups built on it"})
    clean = add_verb(verbs, "clean", common, "remove interrupted backups' leftovers")
    flags(
        clean,
        {
            "include-in-progress": "also remove ones that look in progress",
            "dry-run": "only list what would be removed or aborted",
        },
    )
    clean.add_argument(
        "--uploads-older-than",
        type=_hours,
        default=24.0,
        metavar="HOURS",
        help="abort unfinished uploads (S3 multipart, Azure uncommitted blocks) idle this long (default 24)",
    )
