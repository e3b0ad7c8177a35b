"""Retention: which backups a policy keeps, and `expire`, which deletes the others and the WAL nobody needs.

Deciding is a pure function (`plan_expire`: manifests and "now" in, an `ExpirePlan` with a reason for every
decision out); `expire` reads the repository, plans, and applies the plan in an order that is safe to interrupt:

1. every expired backup gets an ``expired.json`` marker, then loses its manifest (newest first, so an
   incremental backup disappears from the listing before what it is built on): from here on nothing half-deleted
   is ever listed as complete;
2. the expired backups' data is deleted (also that of backups an earlier, interrupted run had marked);
3. WAL that no kept backup and no point of the PITR window needs is deleted, with `WalArchiver.cleanup`.

A rerun after a kill at any point finishes the job: the marked directories are found again, and the plan made
from the remaining manifests gives the same WAL decision.

>>> expire(Repository("s3://backups/prod"), RetentionPolicy.production(), dry_run=True)   # doctest: +SKIP
"""

from __future__ import annotations

from .apply import EXPIRED, ExpireResult, expire, expired_marker_key, scan
from .plan import Decision, ExpirePlan, WalDecision, plan_expire, series_of
from .policy import PRESET_NAMES, PRESETS, RetentionPolicy

__all__ = [
    "EXPIRED",
    "PRESETS",
    "PRESET_NAMES",
    "Decision",
    "ExpirePlan",
    "ExpireResult",
    "RetentionPolicy",
    "WalDecision",
    "expire",
    "expired_marker_key",
    "plan_expire",
    "scan",
    "series_of",
]
