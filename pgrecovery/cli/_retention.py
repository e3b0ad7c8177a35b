"""The ``expire`` verb: delete backups and WAL outside a retention policy (see docs/retention.md).

Kept apart from cli.py like the WAL verbs; building the parser imports nothing beyond the standard library.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from ._common import add_verb, emit, progress, recorded, repository, status_options
from .exitcodes import EXIT_OK

if TYPE_CHECKING:
    from ..retention import ExpireResult, RetentionPolicy
PRESET_NAMES = ("production", "critical", "development", "archive")  # retention.PRESET_NAMES (checked by a test)


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number of 0 or more, got {text!r}")
    return value


def _gfs(text: str) -> tuple[int, int, int, int]:
    parts = text.split(",")
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"expected DAYS,WEEKS,MONTHS,YEARS such as 7,4,12,3, got {text!r}")
    d, w, m, y = (_count(p.strip()) for p in parts)
    return d, w, m, y


def add_verbs(verbs: Any, common: argparse.ArgumentParser) -> None:
    """Register ``expire`` on the main parser's subparsers."""
    p = add_verb(
        verbs,
        "expire",
        common,
        "delete backups and WAL outside a retention policy",
        description="Delete the backups a retention policy does not keep, then the WAL no kept backup needs. "
        "Options given with --policy override the preset's.",
    )
    p.add_argument("--policy", choices=PRESET_NAMES, help="start from this preset (see docs/retention.md)")
    p.add_argument("--keep-last", type=_count, metavar="N", help="keep the N newest full backups of each series")
    p.add_argument("--keep-days", type=_count, metavar="D", help="keep backups younger than D days")
    p.add_argument(
        "--gfs",
        type=_gfs,
        metavar="D,W,M,Y",
        help="keep the newest backup of each of the last D days, W weeks, M months, Y years",
    )
    wal = p.add_mutually_exclusive_group()
    wal.add_argument("--wal", dest="wal", action="store_true", default=None, help="keep continuous WAL (PITR)")
    wal.add_argument(
        "--no-wal", dest="wal", action="store_false", help="keep only the WAL the kept backups need to be consistent"
    )
    p.add_argument("--pitr-days", type=_count, metavar="D", help="PITR window with --wal (default: --keep-days)")
    p.add_argument("--dry-run", action="store_true", help="only print what would be deleted")
    status_options(p)


def policy_from(args: argparse.Namespace) -> RetentionPolicy:
    """The preset of ``--policy`` (or an empty custom policy), with the options given on top."""
    import attrs

    from ..retention import RetentionPolicy

    changes: dict[str, Any] = {}
    for name in ("keep_last", "keep_days", "wal", "pitr_days"):
        if getattr(args, name, None) is not None:
            changes[name] = getattr(args, name)
    if getattr(args, "gfs", None) is not None:
        changes.update(zip(("daily", "weekly", "monthly", "yearly"), args.gfs, strict=True))
    if args.policy:
        base = RetentionPolicy.preset(args.policy)
        if changes.get("wal") is False and "pitr_days" not in changes:
            changes["pitr_days"] = None
        return attrs.evolve(base, **changes) if changes else base
    return RetentionPolicy(**changes)


def _text(result: ExpireResult) -> str:
    plan = result.plan
    gone = "would expire" if result.dry_run else "expired"
    lines = [f"policy {plan.policy.describe()}"]
    lines += [f"keep          {d.id}  {'; '.join(d.reasons)}" for d in plan.kept]
    lines += [f"{gone:<12}  {d.id}  {'; '.join(d.reasons)}" for d in plan.expired]
    lines += [f"{gone:<12}  {i}  (left half-deleted by an interrupted expire)" for i in result.resumed]
    removed = result.wal_removed
    if removed:
        verb = "would remove" if result.dry_run else "removed"
        lines.append(f"WAL: {verb} {len(removed)} file(s), {removed[0]} .. {removed[-1]}")
    else:
        lines.append("WAL: nothing to remove")
    lines.append(plan.wal.note)
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..retention import expire

    repo = repository(args)
    with recorded(args, "expire") as run:
        result = expire(repo, policy_from(args), dry_run=args.dry_run, progress=progress(args))
        run.file_path = repo.display_url
    emit(args, result.to_dict(), _text(result))
    return EXIT_OK


__all__ = ["PRESET_NAMES", "add_verbs", "policy_from", "run"]
