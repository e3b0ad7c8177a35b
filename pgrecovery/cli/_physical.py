"""The physical verbs: ``backup base`` and ``restore base`` (to a point in time, optionally run to its target)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ._common import emit, manifest_text, progress, recorded, recovery_target, repository
from .exitcodes import EXIT_OK

if TYPE_CHECKING:
    from ..recovery.plan import RecoveryPlan


def backup(args: argparse.Namespace) -> int:
    """``backup base``."""
    from ..physical.backup import BaseBackup

    repo = repository(args)
    job = BaseBackup(
        dbname=args.dbname,
        method=args.method,
        pgdata=args.pgdata,
        compression=args.compression,
        level=args.level,
        workers=args.workers,
        fast_checkpoint=not args.spread_checkpoint,
        label=args.label,
        parent=args.parent,
        incremental=args.incremental,
        primary=args.primary_dbname,
    )
    with recorded(args, "base") as run:
        m = job.run(repo, progress=progress(args))
        run.note_backup(m, repo)
    emit(args, m.to_dict(), lambda: manifest_text(m))
    return EXIT_OK


def restore(args: argparse.Namespace) -> int:
    """``restore base``: the files and the recovery configuration, or with ``--run`` the recovery itself."""
    from ..recovery.plan import RecoveryPlan

    repo = repository(args)
    target = recovery_target(args, action=args.target_action)
    plan = RecoveryPlan(repo, target.with_timeline(args.target_timeline), backup_id=args.id)
    spaces = {str(k): str(v) for k, v in args.tablespace_map}
    if args.run:
        return _run(args, plan, spaces)
    path = plan.restore(
        args.pgdata,
        overwrite=args.overwrite,
        delta=args.delta,
        standby=args.standby,
        tablespace_map=spaces,
        archive=not args.no_archive,
        progress=progress(args),
    )
    emit(
        args,
        {"backup_id": plan.backup.id, "target": target.describe(), "pgdata": str(path), **_point(plan)},
        f"restored {plan.backup.id} into {path}, recovery to {target.describe()}{_point_text(plan)} configured: "
        "start the server; " + _archiving(args),
    )
    return EXIT_OK


def _point(plan: RecoveryPlan) -> dict[str, object]:
    """``restore_point`` for --json: where a name target lies (null for other targets)."""
    return {"restore_point": plan.restore_point.to_dict() if plan.restore_point is not None else None}


def _point_text(plan: RecoveryPlan) -> str:
    p = plan.restore_point
    if p is None:
        return ""
    how = "recorded by pgrecovery" if p.source == "recorded" else "found in the archived WAL"
    return f" (at LSN {p.lsn} on timeline {p.timeline}, {how})"


def _run(args: argparse.Namespace, plan: RecoveryPlan, spaces: dict[str, str]) -> int:
    result = plan.run(
        args.pgdata,
        overwrite=args.overwrite,
        delta=args.delta,
        tablespace_map=spaces,
        archive=not args.no_archive,
        progress=progress(args),
    )
    record = f"; incident record {result.incident_key}" if result.incident_key else ""
    emit(
        args,
        {**result.to_dict(), **_point(plan)},
        f"recovered {result.pgdata} from {result.backup_id} to {result.target}{_point_text(plan)}: "
        f"{result.state} at LSN {result.end_lsn} on timeline {result.timeline}, port {result.port}, "
        f"{result.restore_seconds:.1f} s restore + {result.recovery_seconds:.1f} s recovery, "
        f"{result.wal_restored} WAL file(s) replayed{record}; {_archiving(args)}",
    )
    return EXIT_OK


def _archiving(args: argparse.Namespace) -> str:
    """The archiving choice, said with the result: the restored server's WAL goes to the repository or nowhere."""
    if args.no_archive:
        return "archiving off (--no-archive)"
    return "it archives as the backed-up server did, its new timeline too (--no-archive for a copy to look at)"
