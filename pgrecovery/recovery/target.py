"""Where a recovery stops: `RecoveryTarget`, validated where it is built (an empty target is never "the end of the
archive"), and the recovery_target_* settings it writes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal, get_args

import attrs

from .._walnames import parse_lsn
from ..errors import ConfigurationError

TargetKind = Literal["time", "xid", "name", "lsn", "immediate", "latest"]
Action = Literal["promote", "pause", "shutdown"]


def _given(value: str, what: str) -> str:
    """``value`` stripped; an empty or blank one is refused (it must never mean "the end of the archive")."""
    text = value.strip()
    if not text:
        raise ConfigurationError(
            f"the target {what} is empty: give one, or ask for the end of the archive with RecoveryTarget.latest()"
        )
    return text


def _aware(when: datetime | str) -> datetime:
    if isinstance(when, str):
        when = _given(when, "time")
    try:
        dt = datetime.fromisoformat(when.strip()) if isinstance(when, str) else when
    except ValueError:
        raise ConfigurationError(
            f"target time {when!r} is not a timestamp: write it as '2026-03-15 14:30:00+00' (ISO 8601, with a zone)"
        ) from None
    if dt.tzinfo is None:
        raise ConfigurationError(f"target time {when!s} has no time zone: add one, e.g. '+00' or 'Z'")
    return dt.astimezone(UTC)


def _one_of(choices: tuple[str, ...]) -> Any:
    """An attrs validator that refuses anything outside ``choices`` with a `ConfigurationError` naming them."""

    def check(_: object, attribute: attrs.Attribute[str], value: str) -> None:
        if value not in choices:
            raise ConfigurationError(f"recovery target {attribute.name} {value!r}: use {', '.join(choices)}")

    return check


def _check_value(target: RecoveryTarget, _: attrs.Attribute[str | None], value: str | None) -> None:
    """A time, xid, name or LSN target carries a non-blank value; ``immediate`` and ``latest`` carry none."""
    if target.kind in ("immediate", "latest"):
        if value is not None:
            raise ConfigurationError(f"a target of {target.kind} takes no value (got {value!r})")
    elif value is None or not value.strip():
        raise ConfigurationError(
            f"the target {target.kind} is empty: give one, or ask for the end of the archive with "
            "RecoveryTarget.latest()"
        )


@attrs.frozen(kw_only=True)
class RecoveryTarget:
    """Where recovery stops. Build one with the class methods: ``RecoveryTarget.time("2026-03-15 14:30+00")``.

    Every kind but ``latest`` and ``immediate`` needs a value: an empty or blank one is a `ConfigurationError`,
    never a recovery to the end of the archive (that is asked for with ``RecoveryTarget.latest()``).
    """

    kind: TargetKind = attrs.field(validator=_one_of(get_args(TargetKind)))
    value: str | None = attrs.field(default=None, validator=_check_value)
    inclusive: bool = True
    action: Action = attrs.field(default="promote", validator=_one_of(get_args(Action)))
    timeline: str = "latest"

    @classmethod
    def time(cls, when: datetime | str, *, inclusive: bool = True, action: Action = "promote") -> RecoveryTarget:
        return cls(kind="time", value=_aware(when).isoformat(), inclusive=inclusive, action=action)

    @classmethod
    def xid(cls, xid: int | str, *, inclusive: bool = True, action: Action = "promote") -> RecoveryTarget:
        xid = _given(str(xid), "xid")
        if not xid.isdigit():
            raise ConfigurationError(f"target xid {xid!r} is not a transaction id (a positive integer)")
        return cls(kind="xid", value=str(xid), inclusive=inclusive, action=action)

    @classmethod
    def name(cls, name: str, *, action: Action = "promote") -> RecoveryTarget:
        """A restore point (``pg_create_restore_point``), matched exactly as given."""
        _given(name, "restore point name")
        return cls(kind="name", value=name, action=action)

    @classmethod
    def lsn(cls, lsn: str, *, inclusive: bool = True, action: Action = "promote") -> RecoveryTarget:
        lsn = _given(lsn, "LSN")
        try:
            parse_lsn(lsn)
        except ValueError:
            raise ConfigurationError(f"target LSN {lsn!r} is not of the form X/Y (hexadecimal)") from None
        return cls(kind="lsn", value=lsn.upper(), inclusive=inclusive, action=action)

    @classmethod
    def immediate(cls, *, action: Action = "promote") -> RecoveryTarget:
        """Stop as soon as the base backup is consistent."""
        return cls(kind="immediate", action=action)

    @classmethod
    def latest(cls) -> RecoveryTarget:
        """Replay everything the archive holds."""
        return cls(kind="latest")

    def with_timeline(self, timeline: str | int) -> RecoveryTarget:
        """The same target on timeline ``latest``, ``current`` or a number."""
        value = str(timeline)
        if value not in ("latest", "current") and not value.isdigit():
            raise ConfigurationError(f"target timeline {timeline!r}: use latest, current or a timeline number")
        return attrs.evolve(self, timeline=value)

    def settings(self) -> dict[str, str]:
        """The recovery_target_* settings for postgresql.auto.conf."""
        out = {"recovery_target_timeline": self.timeline}
        if self.kind == "latest":
            return out
        if self.kind == "immediate":
            out["recovery_target"] = "immediate"
        else:
            assert self.value is not None
            out[f"recovery_target_{self.kind}"] = self.value
            if self.kind != "name":
                out["recovery_target_inclusive"] = "on" if self.inclusive else "off"
        out["recovery_target_action"] = self.action
        return out

    def describe(self) -> str:
        if self.kind in ("latest", "immediate"):
            return self.kind
        return f"{self.kind} {self.value}" + ("" if self.inclusive or self.kind == "name" else " (exclusive)")
