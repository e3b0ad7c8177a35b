"""`RetentionPolicy`: how many backups and how much history a repository keeps, and its named presets."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

import attrs

from ..errors import ConfigurationError

if TYPE_CHECKING:
    pass

PRESET_NAMES: Final = ("production", "critical", "development", "archive")


# -- the policy ------------------------------------------------------------------------------------------------


def _count(_inst: object, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ConfigurationError(f"retention {attribute.name} must be a whole number of 0 or more, got {value!r}")


@attrs.frozen(kw_only=True)
class RetentionPolicy:
    """What to keep. A backup is kept when any rule keeps it; the rules apply to each series of backups on its
    own (base backups; logical backups of one database; globals; cluster backups).

    - ``keep_last``: the newest N full backups (a base backup without parent, or any logical, globals or cluster
      backup), with every incremental backup built on them.
    - ``keep_days``: every backup started less than D days ago.
    - ``daily``, ``weekly``, ``monthly``, ``yearly`` (grandfather-father-son): the newest backup of each of the
      last X calendar days, Y ISO weeks, Z months and W years, counted in UTC back from now (this one included).
    - ``wal``: continuous WAL. True keeps every WAL file from the start of the oldest kept base backup on, and
      keeps the base backup that the earliest point of the PITR window needs (``pitr_days``, default
      ``keep_days``). False keeps only what each kept base backup needs to be consistent (its own start to end)
      and everything after the newest one.

    Whatever the rules say, the newest backup of each series and every backup that a kept incremental backup is
    built on are kept. ``schedule`` is descriptive (how often a preset expects a full backup); ``expire`` never
    takes backups.
    """

    name: str = "custom"
    schedule: str | None = None
    keep_last: int | None = attrs.field(default=None, validator=_count)
    keep_days: int | None = attrs.field(default=None, validator=_count)
    daily: int = attrs.field(default=0, validator=_count)
    weekly: int = attrs.field(default=0, validator=_count)
    monthly: int = attrs.field(default=0, validator=_count)
    yearly: int = attrs.field(default=0, validator=_count)
    wal: bool = True
    pitr_days: int | None = attrs.field(default=None, validator=_count)

    def __attrs_post_init__(self) -> None:
        if not (self.keep_last or self.keep_days or self.daily or self.weekly or self.monthly or self.yearly):
            raise ConfigurationError(
                "a retention policy needs at least one rule: keep_last, keep_days or daily/weekly/monthly/yearly "
                "(CLI: --policy, --keep-last, --keep-days or --gfs)"
            )
        if self.pitr_days is not None and not self.wal:
            raise ConfigurationError("pitr_days needs wal=True: without continuous WAL there is no PITR window")

    # presets ------------------------------------------------------------------------------------------------
    @classmethod
    def production(cls) -> RetentionPolicy:
        """Daily full backups, continuous WAL, 30 days: any point of the last 30 days can be recovered."""
        return cls(name="production", schedule="daily", keep_days=30, wal=True)

    @classmethod
    def critical(cls) -> RetentionPolicy:
        """Hourly backups, continuous WAL, 90 days."""
        return cls(name="critical", schedule="hourly", keep_days=90, wal=True)

    @classmethod
    def development(cls) -> RetentionPolicy:
        """Weekly backups, no WAL beyond what the backups need, 7 days."""
        return cls(name="development", schedule="weekly", keep_days=7, wal=False)

    @classmethod
    def archive(cls) -> RetentionPolicy:
        """Monthly backups, no WAL beyond what the backups need, 1 year."""
        return cls(name="archive", schedule="monthly", keep_days=365, wal=False)

    @classmethod
    def preset(cls, name: str) -> RetentionPolicy:
        """A preset by name: ``production``, ``critical``, ``development`` or ``archive``."""
        if name not in PRESET_NAMES:
            raise ConfigurationError(f"unknown retention preset {name!r}: choose one of {', '.join(PRESET_NAMES)}")
        policy: RetentionPolicy = getattr(cls, name)()
        return policy

    # derived ------------------------------------------------------------------------------------------------
    @property
    def pitr_window(self) -> timedelta | None:
        """How far back point-in-time recovery must reach (None without continuous WAL or a window)."""
        if not self.wal:
            return None
        days = self.pitr_days if self.pitr_days is not None else self.keep_days
        return timedelta(days=days) if days else None

    def describe(self) -> str:
        rules = []
        if self.keep_last:
            rules.append(f"the last {self.keep_last} full backup(s)")
        if self.keep_days:
            rules.append(f"backups younger than {self.keep_days} day(s)")
        gfs = [f"{n} {unit}" for n, unit in _gfs_parts(self) if n]
        if gfs:
            rules.append("the newest backup of each of the last " + ", ".join(gfs))
        window = self.pitr_window
        if self.wal:
            wal = "continuous WAL" + (f" for a {window.days}-day PITR window" if window else "")
        else:
            wal = "no WAL beyond what the kept backups need"
        return f"{self.name}: keep {'; '.join(rules)}; {wal}"

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


PRESETS: Final[dict[str, RetentionPolicy]] = {name: RetentionPolicy.preset(name) for name in PRESET_NAMES}


def _gfs_parts(policy: RetentionPolicy) -> list[tuple[int, str]]:
    return [(policy.daily, "days"), (policy.weekly, "weeks"), (policy.monthly, "months"), (policy.yearly, "years")]


__all__ = ["PRESETS", "PRESET_NAMES", "RetentionPolicy"]
