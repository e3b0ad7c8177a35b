"""When a policy's jobs fire: `Schedule` (``every``/``at``/``on``, or a 5-field ``cron`` expression), in UTC."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Final

import attrs

from ..errors import ConfigurationError
from ._invalid import _Invalid

WEEKDAYS: Final = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")

_UNITS: Final = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_MONDAY: Final = datetime(1970, 1, 5, tzinfo=UTC)  # the anchor of `every` schedules: a Monday, 00:00 UTC
_SECOND: Final = timedelta(seconds=1)
_MACROS: Final = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
_MONTHS: Final = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS: Final = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_CRON_FIELDS: Final = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS),
)


def _weekday(text: str) -> int:
    """Monday = 0 ... Sunday = 6, from a full or three-letter English name."""
    t = text.strip().lower()
    for i, name in enumerate(WEEKDAYS):
        if t in (name, name[:3]):
            return i
    raise _Invalid("on", f'on = {text!r}: expected a day of the week, e.g. "sunday"')


def _period(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([mhdw])\s*", text)
    if not m or int(m.group(1)) == 0:
        raise _Invalid(
            "every", f'every = {text!r}: expected a positive number and a unit (m, h, d or w), e.g. "6h" or "1d"'
        )
    return int(m.group(1)) * _UNITS[m.group(2)]


def _time_of_day(text: str) -> int:
    m = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*", text)
    if not m or int(m.group(1)) > 23 or int(m.group(2)) > 59:
        raise _Invalid("at", f'at = {text!r}: expected a UTC time of day HH:MM, e.g. "02:00"')
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60


def _cron_value(token: str, lo: int, hi: int, names: Sequence[str], field: str, expr: str) -> int:
    if token.isdigit():
        value = int(token)
    elif token.lower() in names:
        value = names.index(token.lower()) + lo
    else:
        raise _Invalid("cron", f"cron = {expr!r}: {token!r} is not a valid {field}")
    if not lo <= value <= hi:
        raise _Invalid("cron", f"cron = {expr!r}: {field} {value} is out of range ({lo}-{hi})")
    return value


def _check_cron_field(text: str, lo: int, hi: int, names: Sequence[str], field: str, expr: str) -> None:
    for item in text.split(","):
        body, slash, step = item.partition("/")
        if slash and (not step.isdigit() or int(step) == 0):
            raise _Invalid("cron", f"cron = {expr!r}: bad step {step!r} in the {field} field")
        if body == "*":
            continue
        first, dash, last = body.partition("-")
        start = _cron_value(first, lo, hi, names, field, expr)
        if dash and start > _cron_value(last, lo, hi, names, field, expr):
            raise _Invalid("cron", f"cron = {expr!r}: the range {body!r} in the {field} field runs backwards")


def _cron_expression(expr: str) -> str:
    """``expr`` (or a macro such as ``@daily``) as the 5-field expression `cronsim` evaluates, checked here first
    so that an error names the field and the token (and only the classic syntax is taken: no L, W, # or ?)."""
    fields = _MACROS.get(expr.strip().lower(), expr).split()
    if len(fields) != 5:
        raise _Invalid(
            "cron",
            f"cron = {expr!r}: expected 5 fields (minute hour day-of-month month day-of-week), e.g. "
            '"0 3 * * 0", or @hourly, @daily, @weekly, @monthly, @yearly',
        )
    for text, (name, lo, hi, names) in zip(fields, _CRON_FIELDS, strict=True):
        _check_cron_field(text, lo, hi, names, name, expr)
    return " ".join(fields)


def _cron_fire(expr: str, start: datetime, *, reverse: bool) -> datetime | None:
    """The first fire time of ``expr`` after ``start`` (before it with ``reverse``), whole minutes, UTC; None when
    there is none within 50 years (cronsim's horizon)."""
    from cronsim import CronSim, CronSimError  # only cron schedules pay for the import

    try:
        return next(CronSim(expr, start, reverse=reverse))
    except (StopIteration, CronSimError):  # CronSimError: a day no month has (31 February)
        return None


def _utc(value: datetime) -> datetime:
    """Aware datetimes are converted to UTC; naive ones are taken as UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@attrs.frozen(kw_only=True)
class Schedule:
    """When a job fires, in UTC: ``every`` (``"30m"``, ``"6h"``, ``"1d"``, ``"7d"``, ``"2w"``) with an optional
    time of day ``at`` (``"02:00"``) and, for whole weeks, a day ``on`` (``"sunday"``); or a 5-field ``cron``
    expression (minute hour day-of-month month day-of-week, with ``*``, lists, ranges, steps and names).

    ``every`` fires at the multiples of the period counted from Monday 1970-01-05 00:00 UTC, shifted by ``at``
    and ``on``: ``every = "1d", at = "02:00"`` fires at 02:00 each day, ``every = "6h"`` at 00:00, 06:00, 12:00
    and 18:00, ``every = "7d"`` on Mondays at 00:00 unless ``on`` says another day.
    """

    every: str | None = None
    at: str | None = None
    on: str | None = None
    cron: str | None = None
    _period_s: int = attrs.field(init=False, default=0, eq=False, repr=False)
    _anchor: datetime = attrs.field(init=False, default=_MONDAY, eq=False, repr=False)
    _cron: str | None = attrs.field(init=False, default=None, eq=False, repr=False)  # as cronsim takes it

    def __attrs_post_init__(self) -> None:
        if (self.every is None) == (self.cron is None):
            raise _Invalid("every", 'a schedule needs exactly one of every (e.g. "1d") or cron (e.g. "0 3 * * 0")')
        if self.cron is not None:
            if self.at is not None or self.on is not None:
                key = "at" if self.at is not None else "on"
                raise _Invalid(key, f"{key} goes with every, not with cron: put the time in the cron expression")
            parsed = _cron_expression(self.cron)
            if _cron_fire(parsed, datetime(2040, 1, 1, tzinfo=UTC), reverse=True) is None:
                raise _Invalid("cron", f"cron = {self.cron!r} never fires (no such day): fix the day or month")
            object.__setattr__(self, "_cron", parsed)
            return
        assert self.every is not None
        period = _period(self.every)
        offset = _time_of_day(self.at) if self.at is not None else 0
        if self.on is not None:
            if period % _UNITS["w"]:
                raise _Invalid(
                    "on", f'on = {self.on!r} needs a period of whole weeks (every = "7d"), not {self.every!r}'
                )
            offset += _weekday(self.on) * _UNITS["d"]
        object.__setattr__(self, "_period_s", period)
        object.__setattr__(self, "_anchor", _MONDAY + timedelta(seconds=offset))

    def previous(self, now: datetime) -> datetime:
        """The latest fire time at or before ``now``."""
        now = _utc(now)
        if self._cron is not None:
            # from the next second back, so that a fire time of exactly now counts
            found = _cron_fire(self._cron, now.replace(second=0, microsecond=0) + _SECOND, reverse=True)
            if found is None:  # pragma: no cover - excluded when the schedule is made
                raise ConfigurationError(f"cron = {self.cron!r} does not fire in the 50 years before {now}")
            return found
        period = timedelta(seconds=self._period_s)
        return self._anchor + ((now - self._anchor) // period) * period

    def following(self, now: datetime) -> datetime:
        """The earliest fire time after ``now``."""
        now = _utc(now)
        if self._cron is not None:
            found = _cron_fire(self._cron, now.replace(second=0, microsecond=0), reverse=False)
            if found is None:  # pragma: no cover
                raise ConfigurationError(f"cron = {self.cron!r} does not fire in the 50 years after {now}")
            return found
        return self.previous(now) + timedelta(seconds=self._period_s)

    def describe(self) -> str:
        if self.cron is not None:
            return f"cron {self.cron} (UTC)"
        text = f"every {self.every}"
        if self.on is not None:
            text += f" on {WEEKDAYS[_weekday(self.on)]}"
        if self.at is not None:
            text += f" at {self.at}"
        return text + " UTC" if (self.at is not None or self.on is not None) else text

    def to_dict(self) -> dict[str, str]:
        return {k: v for k, v in (("every", self.every), ("at", self.at), ("on", self.on), ("cron", self.cron)) if v}
