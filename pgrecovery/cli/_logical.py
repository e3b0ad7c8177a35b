"""The logical verbs: ``backup logical|globals|cluster``, ``restore logical``, ``restore table`` and ``contents``."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from ._common import emit, manifest_text, options_of, progress, recorded, repository
from ._parser import LOGICAL_BACKUP_FLAGS, LOGICAL_RESTORE_FLAGS
from .exitcodes import EXIT_OK

if TYPE_CHECKING:
    from ..logical.restore import LogicalRestore

# The options of backup logical, passed to `LogicalBackup` under the same names.
_LOGICAL_BACKUP_OPTIONS = (
    *("dbname", "format", "compression", "level", "threads", "jobs"),
    *("schemas", "exclude_schemas", "tables", "exclude_tables", *LOGICAL_BACKUP_FLAGS, "create"),
)

# The options of restore logical, passed to `LogicalRestore.run` under the same names.
_LOGICAL_RESTORE_OPTIONS = ("create", "schemas", "tables", "jobs", *LOGICAL_RESTORE_FLAGS)


def backup(args: argparse.Namespace) -> int:
    """``backup logical``, ``backup globals`` and ``backup cluster``."""
    from ..logical.backup import ClusterBackup, GlobalsBackup, LogicalBackup

    repo = repository(args)
    job: LogicalBackup | GlobalsBackup | ClusterBackup
    if args.kind == "logical":
        job = LogicalBackup(**options_of(args, _LOGICAL_BACKUP_OPTIONS))
    elif args.kind == "globals":
        job = GlobalsBackup(dbname=args.dbname, roles_only=args.roles_only, no_role_passwords=args.no_role_passwords)
    else:
        job = ClusterBackup(dbname=args.dbname, exclude_databases=args.exclude_databases)
    with recorded(args, args.kind) as run:
        m = job.run(repo, progress=progress(args))
        run.note_backup(m, repo)
    emit(args, m.to_dict(), lambda: manifest_text(m))
    return EXIT_OK


def restore(args: argparse.Namespace) -> int:
    """``restore logical`` and ``restore table``."""
    from ..logical.restore import LogicalRestore

    job = LogicalRestore(repository(args), args.id)
    if args.kind == "table":
        return _restore_table(args, job)
    res = job.run(
        args.dbname,
        entries=_listed(args.use_list, job) if args.use_list else None,
        verify_first=not args.no_verify_first,
        progress=progress(args),
        **options_of(args, _LOGICAL_RESTORE_OPTIONS),
    )
    emit(args, res.to_dict(), _restored_into(job.manifest, res, args.dbname))
    return EXIT_OK


def _listed(path: str, job: LogicalRestore) -> list[Any]:
    """The entries of the backup that a ``--use-list`` file (an edited ``contents``) keeps."""
    from ..logical._toc import parse_toc

    try:
        with open(path) as f:
            wanted = {e.dump_id for e in parse_toc(f.read())}
    except OSError as e:
        raise ConfigurationError(f"cannot read --use-list file: {e}") from None
    return [e for e in job.list_contents() if e.dump_id in wanted]


def _restore_table(args: argparse.Namespace, job: LogicalRestore) -> int:
    if args.sql is not None:
        text = job.extract_table(args.table, data=not args.no_data, definition=not args.no_definition)
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
    res = job.restore_table(
        args.table,
        args.dbname,
        new_name=args.new_name,
        data=not args.no_data,
        definition=not args.no_definition,
    )
    emit(
        args,
        res.to_dict(),
        f"restored {args.table} from {res.backup_id}"
        + (f" as {args.new_name}" if args.new_name else "")
        + f": {res.rows} row(s) in {res.seconds:.2f} s",
    )
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


def contents(args: argparse.Namespace) -> int:
    from ..logical.restore import LogicalRestore

    job = LogicalRestore(repository(args), args.id)
    entries = job.table_entries(args.table) if args.table else job.list_contents()
    emit(
        args,
        {"backup_id": job.manifest.id, "entries": [e.to_dict() for e in entries]},
        lambda: (
            f";\n; pgrecovery contents of {job.manifest.id} (edit and pass to restore --use-list)\n;\n"
            + "\n".join(e.line for e in entries)
        ),
    )
    return EXIT_OK
