"""What verification reports: one `Check` per step, gathered in a `VerificationReport`."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal

import attrs

from ..errors import VerificationFailed

Status = Literal["pass", "fail", "warn", "skip"]


@attrs.frozen(kw_only=True)
class Check:
    """One verification step: what was checked, its outcome, the details, and how long it took."""

    name: str
    status: Status
    detail: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "detail": self.detail,
            "seconds": round(self.seconds, 3),
        }


def _checks(value: Iterable[Check]) -> tuple[Check, ...]:
    return tuple(value)


@attrs.frozen(kw_only=True)
class VerificationReport:
    """The outcome of verifying one backup. ``ok`` is true when no check failed (warnings allowed)."""

    backup_id: str
    kind: str
    started_at: datetime
    checks: tuple[Check, ...] = attrs.field(converter=_checks)

    @property
    def ok(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    @property
    def seconds(self) -> float:
        return sum(c.seconds for c in self.checks)

    def raise_for_failure(self) -> None:
        if not self.ok:
            lines = "; ".join(f"{c.name}: {c.detail}" for c in self.failures)
            raise VerificationFailed(f"backup {self.backup_id} failed verification: {lines}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "backup_id": self.backup_id,
            "kind": self.kind,
            "ok": self.ok,
            "started_at": self.started_at.isoformat(),
            "seconds": round(self.seconds, 3),
            "checks": [c.to_dict() for c in self.checks],
        }


__all__ = ["Check", "Status", "VerificationReport"]
