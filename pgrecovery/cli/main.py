"""The ``pgrecovery`` command: parse, call the public API, print, exit. Nothing else lives here.

Exit codes (the only place they are decided): 0 success; 1 the operation or a verification failed;
2 usage error (bad option, unknown backup id, bad repository URL, missing extra).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from .._version import __version__
from ..errors import ConfigurationError, PgRecoveryError

if TYPE_CHECKING:
    from ..recovery.plan import Action, RecoveryTarget

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_EXIT_FOR: list[tuple[type[BaseException], int]] = [
    (ConfigurationError, EXIT_USAGE),
    (PgRecoveryError, EXIT_FAILED),
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line that names the problem and the fix (no usage dump, no traceback)."""
        import difflib
        import re

        found = re.search(r"argument ([^:]*): invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if found:
            arg, word, choices = found.group(1), found.group(2), re.findall(r"'([^']*)'", found.group(3))
            close = difflib.get_close_matches(word, choices, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"choose from {', '.join(choices)}"
            what = {"VERB": "verb", "KIND": "kind"}.get(arg, f"value for {arg}")
            message = f"unknown {what} {word!r}: {hint}"
        self.exit(EXIT_USAGE, f"pgrecovery: {message} (see `{self.prog} --help`)\n")


def _storage_option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def _common() -> _Parser:
    p = _Parser(add_help=False)
    p.add_argument("--repo", default=argparse.SUPPRESS, help="repository URL (default: $PGRECOVERY_REPO)")
    p.add_argument(
        "--storage-option",
        action="append",
        type=_storage_option,
        default=argparse.SUPPRESS,
        metavar="KEY=VALUE",
        help="fsspec storage option (repeatable); fsspec's FSSPEC_<PROTOCOL>_<OPTION> variables work too",
    )
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON (see docs/json.md)")
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log progress details")
    p.add_argument(
        "--encryption-key-file",
        default=argparse.SUPPRESS,
        metavar="PATH",
        help="the repository's encryption key (default: $PGRECOVERY_ENCRYPTION_KEY_FILE or "
        "$PGRECOVERY_ENCRYPTION_KEY; none: not encrypted; see docs/encryption.md)",
    )
    p.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=argparse.SUPPRESS,
        help="log lines on stderr as text or one JSON object per line (default: $PGRECOVERY_LOG_FORMAT or text)",
    )
    return p


def status_options(p: argparse.ArgumentParser, *, reading: bool = False) -> None:
    """The monitoring database's status table (see docs/monitoring.md): where runs are recorded, or read from."""
    what = "read runs from" if reading else "record this run in"
    p.add_argument(
        "--status-dbname",
        default=os.environ.get("PGRECOVERY_STATUS_DBNAME"),
        metavar="CONNINFO",
        help=f"{what} the status table of this monitoring database (default: $PGRECOVERY_STATUS_DBNAME)",
    )
    p.add_argument(
        "--status-table",
        default=os.environ.get("PGRECOVERY_STATUS_TABLE"),
        metavar="NAME",
        help="status table name, optionally schema.table (default: $PGRECOVERY_STATUS_TABLE or "
        "pgrecovery_backup_status)",
    )


def recorded(args: argparse.Namespace, kind: str) -> Any:
    """A `monitoring.recording` block when a status database is configured, else a plain timer-free block."""
    import contextlib

    conninfo = getattr(args, "status_dbname", None)
    if not conninfo:
        return contextlib.nullcontext(_NoRecord())
    from ..monitoring import DEFAULT_STATUS_TABLE, StatusTable, recording

    return recording(StatusTable(conninfo, getattr(args, "status_table", None) or DEFAULT_STATUS_TABLE), kind)


class _NoRecord:
    backup_id: str | None = None
    size_bytes: int | None = None

    def note_backup(self, manifest: Any, repo: Any = None) -> None:
        pass


def _dbname(p: argparse.ArgumentParser, help_text: str = "libpq connection string or URI") -> None:
    p.add_argument("-d", "--dbname", default="", help=f"{help_text} (default: PGHOST, PGPORT, PGUSER, PGDATABASE)")


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = _Parser(prog="pgrecovery", description="PostgreSQL backup and recovery.", parents=[common])
    parser.add_argument("--version", action="version", version=f"pgrecovery {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    verbs.required = True

    backup = verbs.add_parser("backup", help="take a backup", parents=[common])
    kinds = backup.add_subparsers(dest="kind", metavar="KIND", parser_class=_Parser)
    kinds.required = True
    lg = kinds.add_parser("logical", help="pg_dump of one database", parents=[common])
    _dbname(lg)
    lg.add_argument("-F", "--format", choices=["custom", "directory", "plain", "tar"], default="custom")
    lg.add_argument("--compression", choices=["zstd", "gzip", "lz4", "none", "pg_dump"], default="zstd")
    lg.add_argument("--level", type=int, help="compression level")
    lg.add_argument("--threads", type=int, default=0, help="zstd threads (default: one per core)")
    lg.add_argument("-j", "--jobs", type=int, default=1, help="parallel pg_dump jobs (directory format)")
    lg.add_argument("-n", "--schema", action="append", default=[], dest="schemas")
    lg.add_argument("-N", "--exclude-schema", action="append", default=[], dest="exclude_schemas")
    lg.add_argument("-t", "--table", action="append", default=[], dest="tables")
    lg.add_argument("-T", "--exclude-table", action="append", default=[], dest="exclude_tables")
    for flag in (
        "data-only",
        "schema-only",
        "no-owner",
        "no-privileges",
        "no-comments",
        "clean",
        "if-exists",
        "create",
    ):
        lg.add_argument(f"--{flag}", action="store_true")
    gl = kinds.add_parser("globals", help="roles and tablespaces (pg_dumpall --globals-only)", parents=[common])
    _dbname(gl)
    gl.add_argument("--roles-only", action="store_true")
    gl.add_argument("--no-role-passwords", action="store_true")
    bb = kinds.add_parser("base", help="physical base backup of the whole cluster", parents=[common])
    _dbname(bb)
    bb.add_argument("--method", choices=["local", "stream"], default="local")
    bb.add_argument("--pgdata", help="data directory (local method; default: the server's data_directory)")
    bb.add_argument("--compression", choices=["zstd", "gzip", "lz4", "none"], default="zstd")
    bb.add_argument("--level", type=int, default=1)
    bb.add_argument("--workers", type=int, default=2)
    bb.add_argument("--spread-checkpoint", action="store_true", help="do not force a fast checkpoint")
    bb.add_argument("--label", default="pgrecovery")
    bb.add_argument("--parent", help="make it incremental on this base backup (an id or 'latest')")
    cl = kinds.add_parser("cluster", help="globals plus every database", parents=[common])
    _dbname(cl)
    cl.add_argument("--exclude-database", action="append", default=[], dest="exclude_databases")

    restore = verbs.add_parser("restore", help="restore a backup", parents=[common])
    rkinds = restore.add_subparsers(dest="kind", metavar="KIND", parser_class=_Parser)
    rkinds.required = True
    rl = rkinds.add_parser("logical", help="restore a logical, globals or cluster backup", parents=[common])
    rl.add_argument("id", help="backup id or 'latest'")
    _dbname(rl, "target database (or server, for globals and cluster backups)")
    rl.add_argument("--create", action="store_true", help="create the target database first")
    rl.add_argument("-n", "--schema", action="append", default=[], dest="schemas")
    rl.add_argument("-t", "--table", action="append", default=[], dest="tables")
    rl.add_argument("-L", "--use-list", metavar="FILE", help="restore only the entries in FILE (edited `contents`)")
    rl.add_argument("-j", "--jobs", type=int, default=1)
    for flag in (
        "clean",
        "if-exists",
        "no-owner",
        "no-privileges",
        "data-only",
        "schema-only",
        "single-transaction",
        "disable-triggers",
    ):
        rl.add_argument(f"--{flag}", action="store_true")
    rl.add_argument("--no-verify-first", action="store_true", help="skip re-reading the stored files before restoring")
    rb = rkinds.add_parser("base", help="restore a base backup, optionally to a point in time", parents=[common])
    rb.add_argument("id", help="backup id or 'latest' (default: chosen for the target)", nargs="?")
    rb.add_argument("--pgdata", required=True, help="data directory to create")
    target = rb.add_mutually_exclusive_group()
    target.add_argument("--target-time", help="timestamp with time zone, e.g. '2026-03-15 14:30:00+00'")
    target.add_argument("--target-xid")
    target.add_argument("--target-name", help="a restore point name")
    target.add_argument("--target-lsn")
    target.add_argument("--target-immediate", action="store_true", help="stop as soon as the backup is consistent")
    rb.add_argument("--exclusive", action="store_true", help="stop just before the target (time, xid, lsn)")
    rb.add_argument("--target-action", choices=["promote", "pause", "shutdown"], default="promote")
    rb.add_argument("--target-timeline", default="latest", help="latest, current or a timeline number")
    rb.add_argument("--overwrite", action="store_true", help="empty a non-empty --pgdata first")
    rb.add_argument("--delta", action="store_true", help="rewrite only files whose checksum differs from the backup")
    rb.add_argument(
        "--tablespace-map",
        action="append",
        type=_storage_option,
        default=[],
        metavar="OID=DIR",
        help="restore the tablespace with this OID (see `show ID --json`) into DIR (repeatable)",
    )
    rb.add_argument("--standby", action="store_true", help="write standby.signal instead of recovery.signal")
    rb.add_argument("--run", action="store_true", help="start the server and wait until the target is reached")
    rb.add_argument(
        "--no-archive",
        action="store_true",
        help="archive_mode = off in the restored cluster, for a copy to look at (default: it keeps the backup's "
        "archiving and archives its new timeline into the repository, as a replacement server should)",
    )
    rt = rkinds.add_parser("table", help="recover one table from a logical backup", parents=[common])
    rt.add_argument("id", help="backup id or 'latest'")
    rt.add_argument("table", help="table name, optionally schema-qualified (schema.table)")
    _dbname(rt, "target database")
    rt.add_argument("--new-name", help="load under this name instead (the existing table is left alone)")
    rt.add_argument("--sql", metavar="FILE", help="write the table's SQL to FILE ('-' for stdout) instead of restoring")
    rt.add_argument("--no-data", action="store_true", help="definition only")
    rt.add_argument("--no-definition", action="store_true", help="data only (into an existing table)")

    ls = verbs.add_parser("list", help="list complete backups", parents=[common])
    ls.add_argument("--kind", choices=["logical", "globals", "cluster", "base"])
    ls.add_argument("--incomplete", action="store_true", help="also list unfinished / interrupted backups")
    show = verbs.add_parser("show", help="show a backup's manifest", parents=[common])
    show.add_argument("id")
    contents = verbs.add_parser("contents", help="list a logical backup's table of contents", parents=[common])
    contents.add_argument("id")
    contents.add_argument("--table", help="only the entries that recreate this table")
    verify = verbs.add_parser("verify", help="verify a backup", parents=[common])
    verify.add_argument("id", nargs="?", default="latest")
    verify.add_argument("--drill", action="store_true", help="restore it into a sandbox and count rows")
    verify.add_argument("--drill-dbname", help="run the drill on this server instead of a sandbox cluster")
    verify.add_argument(
        "--drill-port", metavar="PORT|LOW-HIGH", help="the port, or range of ports, the drill's sandbox server may use"
    )
    verify.add_argument("--source-dbname", help="compare row counts with this database (default: the recorded source)")
    verify.add_argument("-j", "--jobs", type=int, default=1)
    delete = verbs.add_parser("delete", help="delete a backup", parents=[common])
    delete.add_argument("id")
    delete.add_argument("--with-dependents", action="store_true", help="also delete incremental backups built on it")
    clean = verbs.add_parser("clean", help="remove interrupted backups' leftovers", parents=[common])
    clean.add_argument("--include-in-progress", action="store_true", help="also remove ones that look in progress")
    for p in (lg, gl, bb, cl, verify):
        status_options(p)
    for module in _extensions():
        module.add_verbs(verbs, common)
    demo = verbs.add_parser("demo", help="run the demonstration in a sandbox", parents=[common])
    demo.add_argument("--workdir", help="directory for the sandbox (default: a new temporary one)")
    return parser


# -- output -----------------------------------------------------------------------------------------------------


def _emit(args: argparse.Namespace, data: Any, text: str | Callable[[], str]) -> None:
    out = sys.stdout
    if getattr(args, "json", False):
        out.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    else:
        out.write((text() if callable(text) else text).rstrip("\n") + "\n")


def _progress(args: argparse.Namespace, *, every: float = 10.0) -> Any:
    """A progress callback for long operations: a bar redrawn in place on a terminal, a plain line at most every
    ``every`` seconds otherwise (cron mail, log files). Nothing with --json (unless -v): stdout stays parseable."""
    if getattr(args, "json", False) and not getattr(args, "verbose", False):
        return None
    import time

    from ..progress import Progress, human_bytes

    tty = sys.stderr.isatty()
    last = [-float("inf")]  # the first event is always shown (monotonic time may start near 0 at boot)

    def describe(p: Progress) -> str:
        text = f"{human_bytes(p.done)}"
        if p.total:
            text += f" of {human_bytes(p.total)} ({min(100.0, 100 * p.done / p.total):.0f}%)"
        text += f" at {human_bytes(p.rate)}/s"
        if p.total and p.rate > 0 and not p.finished and p.done < p.total:
            text += f", about {(p.total - p.done) / p.rate:.0f} s left"
        return text

    def show(p: Progress) -> None:
        if tty:
            bar = ""
            if p.total:
                filled = int(24 * min(1.0, p.done / p.total))
                bar = f"[{'#' * filled}{'.' * (24 - filled)}] "
            end = "\n" if p.finished else ""
            sys.stderr.write(f"\r{p.operation}: {bar}{describe(p)}\033[K{end}")
            sys.stderr.flush()
            return
        now = time.monotonic()
        if p.finished or now - last[0] >= every:
            last[0] = now
            state = "done, " if p.finished else ""
            sys.stderr.write(f"pgrecovery: {p.operation}: {state}{describe(p)} after {p.elapsed:.0f} s\n")
            sys.stderr.flush()

    return show


def _repo(args: argparse.Namespace) -> Any:
    from ..repository import Repository

    url = getattr(args, "repo", None) or os.environ.get("PGRECOVERY_REPO")
    if not url:
        raise ConfigurationError("no repository: pass --repo URL or set PGRECOVERY_REPO")
    return Repository(url, encryption=encryption_key(args), **dict(getattr(args, "storage_option", []) or []))


def encryption_key(args: argparse.Namespace) -> Any:
    """The repository key from --encryption-key-file or the environment (None: the repository is not encrypted).
    Only imported when one is configured, so that the plain path stays free of the cryptography package."""
    file = getattr(args, "encryption_key_file", None)
    if (
        not file
        and not os.environ.get("PGRECOVERY_ENCRYPTION_KEY_FILE")
        and not os.environ.get("PGRECOVERY_ENCRYPTION_KEY")
    ):
        return None
    from ..crypto import EncryptionKey

    return EncryptionKey.from_environment(file)


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _manifest_text(m: Any) -> str:
    from ..progress import human_bytes

    lines = [
        f"id:           {m.id}",
        f"kind:         {m.kind}",
        f"database:     {m.database or ', '.join(m.databases) or '-'}",
        f"format:       {m.format}, compression {m.compression}"
        + (f" level {m.compression_level}" if m.compression_level is not None else ""),
        f"started:      {m.started_at.isoformat()}",
        f"duration:     {m.duration:.2f} s",
        f"size:         {human_bytes(m.size)}" + (f" (raw {human_bytes(m.raw_size)})" if m.raw_size else ""),
        f"server:       {m.server_version}",
        f"tool:         {m.tool_version}",
        f"source:       {' '.join(f'{k}={v}' for k, v in m.source.items()) or '-'}",
    ]
    if m.summary is not None:
        lines.append(
            f"contents:     {m.summary.schemas} schema(s), {m.summary.tables} table(s), {m.summary.objects} object(s)"
        )
    if m.options:
        lines.append(f"options:      {json.dumps(m.options, sort_keys=True)}")
    lines.append(f"files:        {len(m.files)}")
    return "\n".join(lines)


# -- verbs ------------------------------------------------------------------------------------------------------


def _cmd_backup(args: argparse.Namespace) -> int:
    from ..logical.backup import ClusterBackup, GlobalsBackup, LogicalBackup

    repo = _repo(args)
    job: LogicalBackup | GlobalsBackup | ClusterBackup
    if args.kind == "logical":
        opts = {
            k: getattr(args, k)
            for k in (
                "dbname",
                "format",
                "compression",
                "level",
                "threads",
                "jobs",
                "schemas",
                "exclude_schemas",
                "tables",
                "exclude_tables",
                "data_only",
                "schema_only",
                "no_owner",
                "no_privileges",
                "no_comments",
                "clean",
                "if_exists",
                "create",
            )
        }
        job = LogicalBackup(**opts)
    elif args.kind == "base":
        from ..physical.backup import BaseBackup

        base = BaseBackup(
            dbname=args.dbname,
            method=args.method,
            pgdata=args.pgdata,
            compression=args.compression,
            level=args.level,
            workers=args.workers,
            fast_checkpoint=not args.spread_checkpoint,
            label=args.label,
            parent=args.parent,
        )
        with recorded(args, "base") as run:
            m = base.run(repo, progress=_progress(args))
            run.note_backup(m, repo)
        _emit(args, m.to_dict(), lambda: _manifest_text(m))
        return EXIT_OK
    elif args.kind == "globals":
        job = GlobalsBackup(dbname=args.dbname, roles_only=args.roles_only, no_role_passwords=args.no_role_passwords)
    else:
        job = ClusterBackup(dbname=args.dbname, exclude_databases=args.exclude_databases)
    with recorded(args, args.kind) as run:
        m = job.run(repo, progress=_progress(args))
        run.note_backup(m, repo)
    _emit(args, m.to_dict(), lambda: _manifest_text(m))
    return EXIT_OK


def _cmd_restore(args: argparse.Namespace) -> int:
    from ..logical._toc import parse_toc
    from ..logical.restore import LogicalRestore

    repo = _repo(args)
    if args.kind == "base":
        return _restore_base(args, repo)
    restore = LogicalRestore(repo, args.id)
    if args.kind == "table":
        if args.sql is not None:
            text = restore.extract_table(args.table, data=not args.no_data, definition=not args.no_definition)
            if args.sql == "-":
                sys.stdout.write(text)
            else:
                try:
                    with open(args.sql, "x") as f:  # never overwrite a file silently
                        f.write(text)
                except FileExistsError:
                    raise ConfigurationError(f"{args.sql} already exists: choose another file or remove it") from None
                except OSError as e:
                    raise ConfigurationError(f"cannot write {args.sql}: {e.strerror}") from None
            return EXIT_OK
        res = restore.restore_table(
            args.table,
            args.dbname,
            new_name=args.new_name,
            data=not args.no_data,
            definition=not args.no_definition,
        )
        _emit(
            args,
            res.to_dict(),
            f"restored {args.table} from {res.backup_id}"
            + (f" as {args.new_name}" if args.new_name else "")
            + f": {res.rows} row(s) in {res.seconds:.2f} s",
        )
        return EXIT_OK
    entries = None
    if args.use_list:
        try:
            with open(args.use_list) as f:
                wanted = {e.dump_id for e in parse_toc(f.read())}
        except OSError as e:
            raise ConfigurationError(f"cannot read --use-list file: {e}") from None
        entries = [e for e in restore.list_contents() if e.dump_id in wanted]
    res = restore.run(
        args.dbname,
        create=args.create,
        schemas=args.schemas,
        tables=args.tables,
        entries=entries,
        jobs=args.jobs,
        clean=args.clean,
        if_exists=args.if_exists,
        no_owner=args.no_owner,
        no_privileges=args.no_privileges,
        data_only=args.data_only,
        schema_only=args.schema_only,
        single_transaction=args.single_transaction,
        disable_triggers=args.disable_triggers,
        verify_first=not args.no_verify_first,
        progress=_progress(args),
    )
    _emit(args, res.to_dict(), _restored_into(restore.manifest, res, args.dbname))
    return EXIT_OK


def _restored_into(m: Any, res: Any, conninfo: str) -> str:
    """Where a logical restore went: the database by name, or the server for globals and cluster backups."""
    from ..pgtools import public_conninfo

    parts = public_conninfo(conninfo)
    server = " ".join(f"{k}={v}" for k, v in parts.items() if k != "dbname") or "libpq's default server"
    if m.kind == "globals":
        what = f"the roles and tablespaces of {res.backup_id} into the server on {server}"
    elif m.kind == "cluster":
        what = f"{res.backup_id} ({len(m.databases)} database(s): {', '.join(m.databases)}) into the server on {server}"
    else:
        what = f"{res.backup_id} into database {res.database!r} on {server}"
    return f"restored {what} in {res.seconds:.2f} s"


# The recovery target options of restore base and rescue: (attribute, option, what to give).
_TARGET_OPTIONS = (
    ("target_time", "--target-time", "a timestamp with a time zone, e.g. '2026-03-15 14:30:00+00'"),
    ("target_xid", "--target-xid", "a transaction id"),
    ("target_name", "--target-name", "a restore point name"),
    ("target_lsn", "--target-lsn", "a WAL position, e.g. 0/3000060"),
)


def recovery_target(
    args: argparse.Namespace, *, action: Action = "promote", latest_allowed: bool = True
) -> RecoveryTarget:
    """The `RecoveryTarget` the --target-* options ask for (none of them: ``latest``, when allowed). An empty or
    blank value is a usage error naming the option: an unset shell variable must never mean "the end of the
    archive"."""
    from ..recovery.plan import RecoveryTarget

    inclusive = not getattr(args, "exclusive", False)
    for attr, option, what in _TARGET_OPTIONS:
        value = getattr(args, attr, None)
        if value is None:
            continue
        if not value.strip():
            hint = "; to recover to the end of the archive, give no --target-* option" if latest_allowed else ""
            raise ConfigurationError(f"{option} is empty: give {what}{hint}")
        if attr == "target_time":
            return RecoveryTarget.time(value, inclusive=inclusive, action=action)
        if attr == "target_xid":
            return RecoveryTarget.xid(value, inclusive=inclusive, action=action)
        if attr == "target_name":
            return RecoveryTarget.name(value, action=action)
        return RecoveryTarget.lsn(value, inclusive=inclusive, action=action)
    if getattr(args, "target_immediate", False):
        return RecoveryTarget.immediate(action=action)
    if not latest_allowed:
        raise ConfigurationError("give a target: --target-time, --target-xid, --target-lsn or --target-name")
    return RecoveryTarget.latest()


def _restore_base(args: argparse.Namespace, repo: Any) -> int:
    from ..recovery.plan import RecoveryPlan

    target = recovery_target(args, action=args.target_action)
    plan = RecoveryPlan(repo, target.with_timeline(args.target_timeline), backup_id=args.id)
    if args.run:
        spaces = {str(k): str(v) for k, v in args.tablespace_map}
        result = plan.run(
            args.pgdata,
            overwrite=args.overwrite,
            delta=args.delta,
            tablespace_map=spaces,
            archive=not args.no_archive,
            progress=_progress(args),
        )
        record = f"; incident record {result.incident_key}" if result.incident_key else ""
        _emit(
            args,
            result.to_dict(),
            f"recovered {result.pgdata} from {result.backup_id} to {result.target}: "
            f"{result.state} at LSN {result.end_lsn} on timeline {result.timeline}, port {result.port}, "
            f"{result.restore_seconds:.1f} s restore + {result.recovery_seconds:.1f} s recovery, "
            f"{result.wal_restored} WAL file(s) replayed{record}; {_archiving(args)}",
        )
        return EXIT_OK
    path = plan.restore(
        args.pgdata,
        overwrite=args.overwrite,
        delta=args.delta,
        standby=args.standby,
        tablespace_map={str(k): str(v) for k, v in args.tablespace_map},
        archive=not args.no_archive,
        progress=_progress(args),
    )
    _emit(
        args,
        {"backup_id": plan.backup.id, "target": target.describe(), "pgdata": str(path)},
        f"restored {plan.backup.id} into {path}, recovery to {target.describe()} configured: start the server; "
        + _archiving(args),
    )
    return EXIT_OK


def _archiving(args: argparse.Namespace) -> str:
    """The archiving choice, said with the result: the restored server's WAL goes to the repository or nowhere."""
    if args.no_archive:
        return "archiving off (--no-archive)"
    return "it archives as the backed-up server did, its new timeline too (--no-archive for a copy to look at)"


def _cmd_list(args: argparse.Namespace) -> int:
    from ..catalog import leftovers
    from ..progress import human_bytes

    repo = _repo(args)
    backups = repo.backups(args.kind)
    extra = leftovers(repo) if args.incomplete else []
    data: dict[str, Any] = {"repository": repo.display_url, "backups": [m.to_dict() for m in backups]}
    if args.incomplete:
        data["incomplete"] = [x.to_dict() for x in extra]

    def text() -> str:
        if not backups and not extra:
            return f"no backups in {repo.display_url}"
        rows = [["ID", "KIND", "DATABASE", "FORMAT", "SIZE", "DURATION", "FINISHED"]]
        for m in backups:
            rows.append(
                [
                    m.id,
                    m.kind,
                    m.database or ",".join(m.databases) or "-",
                    m.format,
                    human_bytes(m.size),
                    f"{m.duration:.1f}s",
                    m.finished_at.strftime("%Y-%m-%d %H:%M:%S"),
                ]
            )
        out = _table(rows) if backups else ""
        if extra:
            out += "\n\nincomplete:\n" + "\n".join(f"{x.id}  {x.reason}" for x in extra)
        return out

    _emit(args, data, text)
    return EXIT_OK


def _cmd_show(args: argparse.Namespace) -> int:
    m = _repo(args).get(args.id)
    _emit(args, m.to_dict(), lambda: _manifest_text(m))
    return EXIT_OK


def _cmd_contents(args: argparse.Namespace) -> int:
    from ..logical.restore import LogicalRestore

    restore = LogicalRestore(_repo(args), args.id)
    entries = restore.table_entries(args.table) if args.table else restore.list_contents()
    _emit(
        args,
        {"backup_id": restore.manifest.id, "entries": [e.to_dict() for e in entries]},
        lambda: (
            f";\n; pgrecovery contents of {restore.manifest.id} (edit and pass to restore --use-list)\n;\n"
            + "\n".join(e.line for e in entries)
        ),
    )
    return EXIT_OK


def _cmd_verify(args: argparse.Namespace) -> int:
    from ..cluster import parse_ports
    from ..errors import VerificationFailed
    from ..verify import Verifier

    class _Failed(VerificationFailed):
        pass

    ports = parse_ports(args.drill_port) if args.drill_port is not None else None
    try:
        with recorded(args, "verify") as run:
            report = Verifier(_repo(args), ports=ports).verify(
                args.id,
                drill=args.drill,
                drill_server=args.drill_dbname,
                source=args.source_dbname,
                jobs=args.jobs,
                progress=_progress(args),
            )
            run.backup_id = report.backup_id
            if not report.ok:  # recorded as a failure, reported below
                bad = [f"{c.name}: {c.detail}" for c in report.failures]
                raise _Failed(f"verification of {report.backup_id} failed: " + "; ".join(bad))
    except _Failed:
        pass

    def text() -> str:
        lines = [f"backup {report.backup_id}: {'OK' if report.ok else 'FAILED'}"]
        lines += [f"  {c.status.upper():4}  {c.name}: {c.detail} ({c.seconds:.2f} s)" for c in report.checks]
        return "\n".join(lines)

    _emit(args, report.to_dict(), text)
    return EXIT_OK if report.ok else EXIT_FAILED


def _cmd_delete(args: argparse.Namespace) -> int:
    gone = _repo(args).delete_backup(args.id, with_dependents=args.with_dependents)
    _emit(
        args,
        {"deleted": gone[-1].id, "dependents": [m.id for m in gone[:-1]]},
        "\n".join(f"deleted {m.id}" for m in gone),
    )
    return EXIT_OK


def _cmd_clean(args: argparse.Namespace) -> int:
    from ..catalog import clean_leftovers

    repo = _repo(args)
    removed = clean_leftovers(repo, include_in_progress=args.include_in_progress)
    temps = repo.stale_temp_files()  # left by writes killed mid-way (an hour old at least)
    for key in temps:
        repo.remove_temp_file(key)
    lines = [f"removed {x.id} ({x.reason})" for x in removed] + [f"removed temporary file {k}" for k in temps]
    _emit(
        args,
        {"removed": [x.to_dict() for x in removed], "temporary_files": temps},
        "\n".join(lines) or "nothing to clean",
    )
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    quiet = getattr(args, "json", False)
    report = run_demo(workdir=args.workdir, out=None if quiet else (lambda s: print(s, flush=True)))
    if quiet:
        _emit(args, report.to_dict(), "")
    return EXIT_OK if report.ok else EXIT_FAILED


_VERBS: dict[str, Callable[[argparse.Namespace], int]] = {
    "backup": _cmd_backup,
    "restore": _cmd_restore,
    "list": _cmd_list,
    "show": _cmd_show,
    "contents": _cmd_contents,
    "verify": _cmd_verify,
    "delete": _cmd_delete,
    "clean": _cmd_clean,
    "demo": _cmd_demo,
}


# Verbs that live in their own modules (each has add_verbs(verbs, common) and run(args)), by verb name.
_EXTENSION_VERBS: dict[str, str] = {
    **dict.fromkeys(
        ["wal-push", "wal-fetch", "wal-prefetch", "wal-verify", "archiver-status", "restore-point", "wal-cleanup"],
        "_wal",
    ),
    "copy": "_copies",
    "check-321": "_copies",
    "check": "_monitoring",
    "metrics": "_monitoring",
    "expire": "_retention",
    "rescue": "_rescue",
    "run-policy": "_policy",
}


def _extensions() -> list[Any]:
    import importlib

    names = dict.fromkeys(_EXTENSION_VERBS.values())
    return [importlib.import_module(f".{name}", __package__) for name in names]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit code (argparse's own --help and usage errors included)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else EXIT_USAGE
        words = sys.argv[1:] if argv is None else list(argv)
        if code and "wal-fetch" in words:
            return 255  # as restore_command: a usage error must stop recovery, not look like "not archived"
        return code
    from ..logs import configure_logging

    try:
        log_format = getattr(args, "log_format", None) or os.environ.get("PGRECOVERY_LOG_FORMAT") or "text"
        if log_format not in ("text", "json"):
            raise ConfigurationError(f"PGRECOVERY_LOG_FORMAT={log_format!r}: use text or json")
        configure_logging(logging.INFO if getattr(args, "verbose", False) else logging.WARNING, log_format == "json")
    except ConfigurationError as e:
        sys.stderr.write(f"pgrecovery: {e}\n")
        return EXIT_USAGE
    try:
        if args.verb in _VERBS:
            return _VERBS[args.verb](args)
        import importlib

        module: Any = importlib.import_module(f".{_EXTENSION_VERBS[args.verb]}", __package__)
        return int(module.run(args))
    except PgRecoveryError as e:
        code = next(c for t, c in _EXIT_FOR if isinstance(e, t))
        sys.stderr.write(f"pgrecovery: {e}\n")
        return code
    except KeyboardInterrupt:
        sys.stderr.write("pgrecovery: interrupted\n")
        return 130


def run() -> NoReturn:
    sys.exit(main())


if __name__ == "__main__":
    run()
