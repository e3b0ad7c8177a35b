"""`expire`: read the repository, plan, and apply the plan in the order that is safe to interrupt."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import attrs

from .. import _walnames
from ..catalog import BACKUPS, leftovers, manifest_key, read_manifest
from ..errors import BackupNotFound, ManifestError, StorageError
from ..manifest import BackupManifest
from ..progress import Meter, ProgressCallback
from .plan import ExpirePlan, WalDecision, _aware, plan_expire
from .policy import RetentionPolicy

if TYPE_CHECKING:
    from ..repository import Repository

EXPIRED: Final = "expired.json"


def expired_marker_key(backup_id: str) -> str:
    """``backups/<id>/expired.json``: written before the manifest is deleted; marks a directory `expire` owns."""
    return f"{BACKUPS}/{backup_id}/{EXPIRED}"


# -- applying it -----------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ExpireResult:
    """What `expire` did (with ``dry_run``: would do). ``resumed``: backups an earlier, interrupted expire had
    already unlisted, whose data was deleted now. ``wal_removed``: WAL file names, sorted."""

    plan: ExpirePlan
    dry_run: bool
    deleted: tuple[str, ...]
    resumed: tuple[str, ...] = ()
    wal_removed: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = self.plan.to_dict()
        data.update(
            {
                "dry_run": self.dry_run,
                "deleted": list(self.deleted),
                "resumed": list(self.resumed),
            }
        )
        data["wal"] = {**data["wal"], "removed": list(self.wal_removed), "removed_count": len(self.wal_removed)}
        return data


def scan(repo: Repository) -> tuple[list[BackupManifest], list[str], list[str]]:
    """(complete backups oldest first, ids whose manifest cannot be read, ids an interrupted expire unlisted)."""
    complete: list[BackupManifest] = []
    unreadable: list[str] = []
    unlisted: list[str] = []
    for backup_id in repo.children(BACKUPS):
        if repo.exists(manifest_key(backup_id)):
            try:
                complete.append(read_manifest(repo, backup_id))
            except ManifestError:
                unreadable.append(backup_id)
            except BackupNotFound:
                continue  # deleted meanwhile
        elif repo.exists(expired_marker_key(backup_id)):
            unlisted.append(backup_id)
    complete.sort(key=lambda m: (m.started_at, m.id))
    return complete, unreadable, unlisted


def expire(
    repo: Repository,
    policy: RetentionPolicy,
    *,
    dry_run: bool = False,
    now: datetime | None = None,
    progress: ProgressCallback | None = None,
) -> ExpireResult:
    """Delete the backups ``policy`` does not keep at ``now`` (default: the current time), then the WAL nobody
    needs. With ``dry_run`` nothing is touched and the result says what would go. ``progress`` counts backups."""
    now = _aware(now)
    complete, unreadable, unlisted = scan(repo)
    busy = [x for x in leftovers(repo) if x.reason == "in progress" and x.id not in unlisted]
    plan = plan_expire(complete, policy, now, in_progress=busy, unreadable=unreadable)
    victims = sorted(plan.expired, key=lambda d: (d.started_at, d.id), reverse=True)
    if dry_run:
        wal = _expire_wal(repo, plan.wal, dry_run=True)
        return ExpireResult(
            plan=plan, dry_run=True, deleted=tuple(d.id for d in victims), resumed=tuple(unlisted), wal_removed=wal
        )
    for d in plan.kept:  # an expire interrupted before it could spare a backup left its marker
        if repo.exists(expired_marker_key(d.id)):
            repo.delete(expired_marker_key(d.id))
    marker = json.dumps({"expired_at": now.isoformat(), "policy": policy.name}).encode()
    marked = []
    for d in victims:
        try:
            repo.put_bytes(expired_marker_key(d.id), marker, overwrite=True)
        except StorageError:
            if repo.exists(manifest_key(d.id)):
                raise
            continue  # another expire (or delete) took it meanwhile: it is gone, which is the goal
        marked.append(d)
    victims = marked
    # A backup that started since the scan may build on a victim: look again now that the markers are there (a
    # backup that starts later sees them and refuses to finish on an expired parent), and spare what it needs.
    seen = {x.id for x in busy}
    again = [x for x in leftovers(repo) if x.reason == "in progress" and x.id not in unlisted and x.id not in seen]
    if again:  # planning with more backups in progress only keeps more
        plan = plan_expire(complete, policy, now, in_progress=[*busy, *again], unreadable=unreadable)
        still = set(plan.expired_ids)
        for d in victims:
            if d.id not in still:
                repo.delete(expired_marker_key(d.id))
        victims = [d for d in victims if d.id in still]
    for d in victims:  # newest first: incremental backups leave the listing before what they are built on
        repo.delete(manifest_key(d.id))
    meter = Meter("expire", progress, total=len(unlisted) + len(victims))
    for backup_id in [*unlisted, *(d.id for d in victims)]:
        repo.delete_prefix(f"{BACKUPS}/{backup_id}")
        meter.add(1)
    meter.finish()
    wal = _expire_wal(repo, plan.wal, dry_run=False)
    return ExpireResult(
        plan=plan, dry_run=False, deleted=tuple(d.id for d in victims), resumed=tuple(unlisted), wal_removed=wal
    )


def _expire_wal(repo: Repository, decision: WalDecision, *, dry_run: bool) -> tuple[str, ...]:
    from ..wal.archiver import WalArchiver

    if decision.keep_from is None:
        return ()
    archiver = WalArchiver(repo, segment_size=decision.segment_size)
    if not archiver.timelines():
        return ()
    # A dry run leaves the expired manifests in place, which cleanup's own guard would count as needing the WAL.
    removed = archiver.cleanup(decision.keep_from, dry_run=dry_run, force=dry_run)
    if decision.keep_after is None:
        return tuple(removed)
    gone = set(removed)
    extra = []
    for tli in archiver.timelines():
        for name, objs in archiver.index(tli).items():
            if _walnames.is_history(name) or name in gone:
                continue
            segno = _walnames.segment_number(name[:24], decision.segment_size)
            if segno > decision.keep_after or any(t == tli and a <= segno <= b for t, a, b in decision.ranges):
                continue
            if not dry_run:
                for obj in objs:
                    repo.delete(obj.key)
            extra.append(name)
    return tuple(sorted([*removed, *extra]))


__all__ = ["EXPIRED", "ExpireResult", "expire", "expired_marker_key", "scan"]
