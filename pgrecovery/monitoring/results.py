"""Check results: a check's state (its value is the Nagios exit code), one check's result, and the report of
them all."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import attrs


class CheckState(enum.IntEnum):
    """A check's outcome; the value is the Nagios exit code."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3

    @property
    def severity(self) -> int:
        """Order for "worst of": OK < WARNING < UNKNOWN < CRITICAL."""
        return {0: 0, 1: 1, 3: 2, 2: 3}[int(self)]


def _seconds(value: timedelta | None) -> float | None:
    return None if value is None else value.total_seconds()


@attrs.frozen(kw_only=True)
class CheckResult:
    """One check: its name (``logical-backup``, ``wal-lag``, ...), state, a one-line detail, and the measured
    ``value`` with the thresholds it was compared with (``unit`` says what they count)."""

    name: str
    state: CheckState
    detail: str
    value: float | None = None
    warning: float | None = None
    critical: float | None = None
    unit: str | None = None

    @property
    def line(self) -> str:
        return f"{self.state.name} - {self.name}: {self.detail}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.name,
            "state": self.state.name,
            "detail": self.detail,
            "value": self.value,
            "warning": self.warning,
            "critical": self.critical,
            "unit": self.unit,
        }


def _results(value: Iterable[CheckResult]) -> tuple[CheckResult, ...]:
    return tuple(value)


@attrs.frozen(kw_only=True)
class HealthReport:
    """Every check's result. ``state`` is the worst of them (CRITICAL > UNKNOWN > WARNING > OK); ``exit_code`` is
    its Nagios code (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN)."""

    checks: tuple[CheckResult, ...] = attrs.field(converter=_results)
    checked_at: datetime
    repository: str | None = None
    database: str | None = None
    status_table: str | None = None

    @property
    def state(self) -> CheckState:
        if not self.checks:
            return CheckState.UNKNOWN
        return max((c.state for c in self.checks), key=lambda s: s.severity)

    @property
    def exit_code(self) -> int:
        return int(self.state)

    @property
    def summary(self) -> str:
        if not self.checks:
            return "UNKNOWN - pgrecovery: no check enabled"
        counts = {s: sum(1 for c in self.checks if c.state is s) for s in CheckState}
        parts = [f"{n} {s.name}" for s in sorted(CheckState, key=lambda s: -s.severity) if (n := counts[s])]
        return f"{self.state.name} - pgrecovery: {len(self.checks)} check(s): {', '.join(parts)}"

    def lines(self) -> list[str]:
        return [*(c.line for c in self.checks), self.summary]

    def text(self) -> str:
        return "\n".join(self.lines())

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.name,
            "exit_code": self.exit_code,
            "summary": self.summary,
            "checked_at": self.checked_at.isoformat(),
            "sources": {
                "repository": self.repository,
                "database": self.database,
                "status_table": self.status_table,
            },
            "checks": [c.to_dict() for c in self.checks],
        }
