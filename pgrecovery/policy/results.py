"""What `run_policy` returns: a `JobRun` per job, in a `PolicyRun`."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

import attrs


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


Status = Literal["succeeded", "failed", "due", "not-due", "disabled"]


@attrs.frozen(kw_only=True)
class JobRun:
    """One job in a `run_policy` call: whether it was due and why, and (unless a dry run) how its run went."""

    name: str
    kind: str
    schedule: str
    status: Status
    reason: str
    scheduled_at: datetime | None = None
    next_at: datetime | None = None
    last_success: datetime | None = None
    started_at: datetime | None = None
    seconds: float | None = None
    backup_id: str | None = None
    error: str | None = None
    detail: Mapping[str, Any] = attrs.field(factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "schedule": self.schedule,
            "status": self.status,
            "reason": self.reason,
            "scheduled_at": _iso(self.scheduled_at),
            "next_at": _iso(self.next_at),
            "last_success": _iso(self.last_success),
            "started_at": _iso(self.started_at),
            "seconds": round(self.seconds, 3) if self.seconds is not None else None,
            "backup_id": self.backup_id,
            "error": self.error,
            "detail": dict(self.detail),
        }


@attrs.frozen(kw_only=True)
class PolicyRun:
    """What a `run_policy` call found and did. ``ok``: no job failed."""

    policy: str
    source: str | None
    now: datetime
    dry_run: bool
    state_file: str
    jobs: tuple[JobRun, ...]

    @property
    def ran(self) -> list[JobRun]:
        return [j for j in self.jobs if j.status in ("succeeded", "failed")]

    @property
    def failed(self) -> list[JobRun]:
        return [j for j in self.jobs if j.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "source": self.source,
            "now": self.now.isoformat(),
            "dry_run": self.dry_run,
            "state_file": self.state_file,
            "ok": self.ok,
            "ran": len(self.ran),
            "failed": len(self.failed),
            "jobs": [j.to_dict() for j in self.jobs],
        }
