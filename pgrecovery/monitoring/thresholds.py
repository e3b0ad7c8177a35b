"""What the checks call late or backlogged: durations (``25h``, ``off``), age and count limits, `Thresholds`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Final

import attrs

from ..errors import ConfigurationError
from .results import CheckState

BACKUP_KINDS: Final = ("logical", "globals", "cluster", "base")

# -- durations ---------------------------------------------------------------------------------------------------

_UNITS: Final = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION: Final = re.compile(r"(\d+(?:\.\d+)?)\s*(s|min|m|h|d|w)")


def parse_duration(text: str) -> timedelta | None:
    """``"25h"``, ``"90m"``, ``"1d12h"``, ``"30s"``, ``"2w"`` as a timedelta; ``"off"`` (or ``"none"``) is None."""
    t = text.strip().lower().replace(" ", "")
    if t in ("off", "none", "no", "disabled"):
        return None
    if not t or _DURATION.sub("", t):
        raise ConfigurationError(
            f"bad duration {text!r}: write a number with a unit (s, m, h, d, w), e.g. 25h, 90m or 1d12h, or 'off'"
        )
    return timedelta(seconds=sum(float(n) * _UNITS[u] for n, u in _DURATION.findall(t)))


def human_duration(value: timedelta | float) -> str:
    """``3 h 2 min``, ``8 d 1 h``, ``45 s``: two units at most."""
    seconds = round(value.total_seconds() if isinstance(value, timedelta) else value)
    if seconds < 0:
        return "-" + human_duration(-seconds)
    units = (("d", 86400), ("h", 3600), ("min", 60), ("s", 1))
    for i, (unit, size) in enumerate(units[:-1]):
        if seconds >= size:
            next_unit, next_size = units[i + 1]
            rest = (seconds % size) // next_size
            return f"{seconds // size} {unit}" + (f" {rest} {next_unit}" if rest else "")
    return f"{seconds} s"


# -- thresholds --------------------------------------------------------------------------------------------------


def _limit_order(instance: AgeLimit | CountLimit, _attr: Any, _value: Any) -> None:
    w, c = instance.warning, instance.critical
    if w is not None and c is not None and w > c:  # type: ignore[operator]
        raise ConfigurationError(f"warning threshold ({w}) is above the critical one ({c}): swap them")


@attrs.frozen
class AgeLimit:
    """Warning and critical ages; None disables that level (both None: the check is off)."""

    warning: timedelta | None = None
    critical: timedelta | None = attrs.field(default=None, validator=_limit_order)

    @property
    def enabled(self) -> bool:
        return self.warning is not None or self.critical is not None

    def state(self, age: timedelta) -> CheckState:
        if self.critical is not None and age >= self.critical:
            return CheckState.CRITICAL
        if self.warning is not None and age >= self.warning:
            return CheckState.WARNING
        return CheckState.OK

    def describe(self) -> str:
        levels = (("warning", self.warning), ("critical", self.critical))
        return ", ".join(f"{name} after {human_duration(v)}" for name, v in levels if v is not None)


@attrs.frozen
class CountLimit:
    """Warning and critical counts; None disables that level."""

    warning: int | None = None
    critical: int | None = attrs.field(default=None, validator=_limit_order)

    def state(self, count: int) -> CheckState:
        if self.critical is not None and count >= self.critical:
            return CheckState.CRITICAL
        if self.warning is not None and count >= self.warning:
            return CheckState.WARNING
        return CheckState.OK


def _default_backups() -> dict[str, AgeLimit]:
    return {
        "logical": AgeLimit(timedelta(hours=24), timedelta(hours=25)),
        "base": AgeLimit(timedelta(days=7), timedelta(days=8)),
    }


def _backup_limits(value: Mapping[str, AgeLimit]) -> dict[str, AgeLimit]:
    out = {}
    for kind, limit in value.items():
        if kind not in BACKUP_KINDS:
            raise ConfigurationError(f"unknown backup kind {kind!r}: choose from {', '.join(BACKUP_KINDS)}")
        if limit.enabled:
            out[kind] = limit
    return out


@attrs.frozen(kw_only=True)
class Thresholds:
    """What `check` (and the SQL function) call late or backlogged. Defaults suit daily logical backups, weekly
    base backups and continuous WAL archiving.

    ``backups``: age of the newest complete backup of each kind (a kind left out, or with both levels None, is
    not checked). ``wal``: run the WAL checks at all. ``wal_lag``: how long the oldest finished segment has been
    waiting to be archived (or, from the repository alone, the age of the newest archived object). ``ready``:
    ``.ready`` files waiting. ``failing_critical``: archiving failing for this long is CRITICAL, less is WARNING.
    """

    backups: dict[str, AgeLimit] = attrs.field(factory=_default_backups, converter=_backup_limits)
    wal: bool = True
    wal_lag: AgeLimit = AgeLimit(timedelta(minutes=15), timedelta(hours=1))
    ready: CountLimit = CountLimit(10, 50)
    failing_critical: timedelta | None = timedelta(minutes=10)

    def with_backup(self, kind: str, limit: AgeLimit | None) -> Thresholds:
        """A copy with ``kind``'s age limit replaced (None: that kind is not checked)."""
        backups = dict(self.backups)
        backups.pop(kind, None)
        if limit is not None:
            backups[kind] = limit
        return attrs.evolve(self, backups=backups)
