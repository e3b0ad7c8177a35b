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

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Literal

import attrs

from . import _walnames
from .catalog import BACKUPS, Leftover, leftovers, manifest_key, needs_of, read_manifest
from .errors import BackupNotFound, ConfigurationError, ManifestError, StorageError
from .manifest import BackupManifest
from .progress import Meter, ProgressCallback

if TYPE_CHECKING:
    from .repository import Repository

EXPIRED: Final = "expired.json"
PRESET_NAMES: Final = ("production", "critical", "development", "archive")


def expired_marker_key(backup_id: str) -> str:
    """``backups/<id>/expired.json``: written before the manifest is deleted; marks a directory `expire` owns."""
    return f"{BACKUPS}/{backup_id}/{EXPIRED}"


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


# -- the plan --------------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Decision:
    """One backup's fate, with every reason (why kept: each rule that keeps it; why expired)."""

    id: str
    kind: str
    started_at: datetime
    reasons: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "started_at": self.started_at.isoformat(),
            "reasons": list(self.reasons),
        }


@attrs.frozen(kw_only=True)
class WalDecision:
    """Which archived WAL may go.

    ``keep_from``: every WAL file older than this segment (on its timeline and earlier ones) may go; None leaves
    the archive alone (``note`` says why). ``mode`` ``continuous`` keeps everything from there on;
    ``consistency`` also removes files between kept base backups: those of ``ranges`` (timeline, first, last
    segment number each kept backup needs) stay, and so does everything after segment number ``keep_after`` (the
    end of the newest kept base backup).
    History files are never removed.
    """

    mode: Literal["continuous", "consistency"]
    keep_from: str | None
    backup_id: str | None
    segment_size: int = _walnames.DEFAULT_SEGMENT_SIZE
    ranges: tuple[tuple[int, int, int], ...] = ()
    keep_after: int | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "keep_from": self.keep_from, "backup_id": self.backup_id, "note": self.note}


@attrs.frozen(kw_only=True)
class ExpirePlan:
    """What `expire` keeps and deletes, and why. Made by `plan_expire`; nothing is touched to make it."""

    policy: RetentionPolicy
    now: datetime
    kept: tuple[Decision, ...]
    expired: tuple[Decision, ...]
    wal: WalDecision

    @property
    def kept_ids(self) -> list[str]:
        return [d.id for d in self.kept]

    @property
    def expired_ids(self) -> list[str]:
        return [d.id for d in self.expired]

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy.to_dict(),
            "now": self.now.isoformat(),
            "kept": [d.to_dict() for d in self.kept],
            "expired": [d.to_dict() for d in self.expired],
            "wal": self.wal.to_dict(),
        }


def series_of(m: BackupManifest) -> str:
    """The series a backup is counted in: its kind, and for logical backups also the database."""
    return f"logical:{m.database or ''}" if m.kind == "logical" else m.kind


def _is_full(m: BackupManifest) -> bool:
    return m.physical is None or m.physical.parent is None


def _root(m: BackupManifest, by_id: dict[str, BackupManifest]) -> str | None:
    """The full backup at the start of ``m``'s chain; None when a link is missing."""
    seen = set()
    while m.physical is not None and m.physical.parent is not None:
        parent = m.physical.parent
        if m.id in seen or parent not in by_id:
            return None
        seen.add(m.id)
        m = by_id[parent]
    return m.id


def _aware(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ConfigurationError(f"'now' ({now.isoformat()}) has no time zone: give an aware datetime")
    return now.astimezone(UTC)


def _age(now: datetime, then: datetime) -> str:
    seconds = (now - then).total_seconds()
    if seconds >= 2 * 86400:
        return f"{int(seconds // 86400)} days old"
    return f"{int(seconds // 3600)} hours old"


def _gfs_keys(now: datetime, policy: RetentionPolicy) -> list[tuple[str, Any, set[Any]]]:
    """(label, key function, the keys of the periods to keep) for each grandfather-father-son rule in use."""
    today = now.date()
    monday = today - timedelta(days=today.weekday())
    out: list[tuple[str, Any, set[Any]]] = []
    if policy.daily:
        out.append(("daily", lambda d: d, {today - timedelta(days=i) for i in range(policy.daily)}))
    if policy.weekly:
        out.append(
            (
                "weekly",
                lambda d: d - timedelta(days=d.weekday()),
                {monday - timedelta(weeks=i) for i in range(policy.weekly)},
            )
        )
    if policy.monthly:
        months = set()
        y, mo = today.year, today.month
        for _ in range(policy.monthly):
            months.add((y, mo))
            y, mo = (y, mo - 1) if mo > 1 else (y - 1, 12)
        out.append(("monthly", lambda d: (d.year, d.month), months))
    if policy.yearly:
        out.append(("yearly", lambda d: d.year, {today.year - i for i in range(policy.yearly)}))
    return out


def _period_label(rule: str, key: Any) -> str:
    if rule == "daily":
        return f"daily {key.isoformat()}"
    if rule == "weekly":
        iso = key.isocalendar()
        return f"weekly {iso.year}-W{iso.week:02d}"
    if rule == "monthly":
        return f"monthly {key[0]}-{key[1]:02d}"
    return f"yearly {key}"


def plan_expire(
    manifests: Iterable[BackupManifest],
    policy: RetentionPolicy,
    now: datetime | None = None,
    *,
    in_progress: Sequence[Leftover] = (),
    unreadable: Sequence[str] = (),
) -> ExpirePlan:
    """Decide, for every complete backup, whether ``policy`` keeps it at ``now``, and which WAL may go.

    ``in_progress``: backups being written (`catalog.leftovers` that look in progress); a base backup among them
    may need WAL that no manifest mentions yet, so WAL is then left alone. ``unreadable``: ids of backups whose
    manifest could not be read (WAL is left alone too: nobody knows what they need). Pure: no I/O.
    """
    now = _aware(now)
    backups = sorted(manifests, key=lambda m: (m.started_at, m.id))
    by_id = {m.id: m for m in backups}
    reasons: dict[str, list[str]] = {}

    def keep(backup_id: str, why: str) -> None:
        found = reasons.setdefault(backup_id, [])
        if why not in found:
            found.append(why)

    series: dict[str, list[BackupManifest]] = {}
    for m in backups:
        series.setdefault(series_of(m), []).append(m)
    gfs = _gfs_keys(now, policy)
    for name, items in series.items():
        label = name.replace("logical:", "logical backup of ") if name.startswith("logical:") else f"{name} backup"
        keep(items[-1].id, f"newest {label}")
        if policy.keep_last:
            fulls = [m for m in items if _is_full(m)][-policy.keep_last :]
            kept_roots = {m.id for m in fulls}
            for m in fulls:
                keep(m.id, f"one of the last {policy.keep_last} full backup(s)")
            for m in items:
                root = None if _is_full(m) else _root(m, by_id)
                if root in kept_roots:
                    keep(m.id, f"incremental on {root}, one of the last {policy.keep_last} full backup(s)")
        if policy.keep_days:
            cutoff = now - timedelta(days=policy.keep_days)
            for m in items:
                if m.started_at >= cutoff:
                    keep(m.id, f"younger than {policy.keep_days} day(s)")
        for rule, key_of, wanted in gfs:
            newest: dict[Any, BackupManifest] = {}
            for m in items:  # oldest first: the last one seen in a period is its newest
                k = key_of(m.started_at.date())
                if k in wanted:
                    newest[k] = m
            for k, m in newest.items():
                keep(m.id, _period_label(rule, k))

    window = policy.pitr_window
    bases = [m for m in backups if m.physical is not None]
    if window is not None and bases:
        start = now - window
        before = [m for m in bases if m.finished_at <= start]
        if before:
            keep(before[-1].id, f"start of the {window.days}-day PITR window (newest base backup finished before it)")
        else:
            keep(bases[0].id, f"start of the {window.days}-day PITR window (oldest base backup)")

    for busy in in_progress:  # an incremental backup being written takes files from these
        for dep in busy.needs or ():
            if dep in by_id:
                keep(dep, f"needed by backup {busy.id}, in progress")

    todo = list(reasons)
    while todo:  # whatever a kept incremental backup is built on is kept, transitively
        m = by_id[todo.pop()]
        for dep in needs_of(m):
            if dep in by_id:
                first = dep not in reasons
                keep(dep, f"needed by incremental backup {m.id}")
                if first:
                    todo.append(dep)

    kept = tuple(
        Decision(id=m.id, kind=m.kind, started_at=m.started_at, reasons=tuple(reasons[m.id]))
        for m in backups
        if m.id in reasons
    )
    expired = tuple(
        Decision(
            id=m.id, kind=m.kind, started_at=m.started_at, reasons=(f"outside the policy ({_age(now, m.started_at)})",)
        )
        for m in backups
        if m.id not in reasons
    )
    wal = _wal_decision(policy, [by_id[d.id] for d in kept], in_progress, unreadable)
    return ExpirePlan(policy=policy, now=now, kept=kept, expired=expired, wal=wal)


def _wal_decision(
    policy: RetentionPolicy, kept: list[BackupManifest], in_progress: Sequence[Leftover], unreadable: Sequence[str]
) -> WalDecision:
    mode: Literal["continuous", "consistency"] = "continuous" if policy.wal else "consistency"
    bases = [m for m in kept if m.physical is not None]
    if unreadable:
        return WalDecision(
            mode=mode,
            keep_from=None,
            backup_id=None,
            note=f"WAL left alone: the manifest of {', '.join(unreadable)} cannot be read, so what it needs is "
            "unknown (upgrade pgrecovery or remove that backup)",
        )
    if not bases:
        return WalDecision(mode=mode, keep_from=None, backup_id=None, note="WAL left alone: no base backup is kept")
    size = bases[0].physical.wal_segment_size if bases[0].physical else _walnames.DEFAULT_SEGMENT_SIZE

    def first_segno(m: BackupManifest) -> int:
        assert m.physical is not None
        return _walnames.segment_number(m.physical.start_wal, size)

    oldest = min(bases, key=lambda m: (first_segno(m), m.started_at))
    assert oldest.physical is not None
    busy = [x for x in in_progress if _leftover_kind(x.id) == "base"]
    late = [x for x in busy if x.started_at is None or x.started_at < oldest.started_at]
    if late:
        return WalDecision(
            mode=mode,
            keep_from=None,
            backup_id=None,
            note=f"WAL left alone: base backup {late[0].id} is in progress and may need older WAL; "
            "run expire again once it has finished",
        )
    ranges: tuple[tuple[int, int, int], ...] = ()
    keep_after = None
    if mode == "consistency" and not busy:
        spans = []
        for m in bases:
            assert m.physical is not None
            spans.append(
                (
                    m.physical.timeline,
                    _walnames.segment_number(m.physical.start_wal, size),
                    _walnames.segment_number(m.physical.stop_wal, size),
                )
            )
        ranges = tuple(sorted(spans))
        newest = max(bases, key=lambda m: (m.started_at, m.id))
        assert newest.physical is not None
        keep_after = _walnames.segment_number(newest.physical.stop_wal, size)
        note = (
            f"WAL older than {oldest.physical.start_wal} (start of {oldest.id}) and between kept base backups "
            "goes; each kept base backup keeps the WAL from its start to its end, and WAL after the newest one stays"
        )
    elif mode == "consistency":
        note = (
            f"WAL older than {oldest.physical.start_wal} (start of {oldest.id}) goes; WAL between kept base "
            f"backups stays this time because base backup {busy[0].id} is in progress"
        )
    else:
        note = (
            f"WAL older than {oldest.physical.start_wal} (start of {oldest.id}, the oldest kept base backup) goes; "
            f"every later WAL file stays: recovery reaches any point after {oldest.finished_at.isoformat()}"
        )
    return WalDecision(
        mode=mode,
        keep_from=oldest.physical.start_wal,
        backup_id=oldest.id,
        segment_size=size,
        ranges=ranges,
        keep_after=keep_after,
        note=note,
    )


def _leftover_kind(backup_id: str) -> str:
    """The kind in a backup id (``20261124T101500Z-base-1`` -> ``base``)."""
    parts = backup_id.split("-")
    return parts[1] if len(parts) > 1 else ""


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
    from .wal.archiver import WalArchiver

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
