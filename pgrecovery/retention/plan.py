"""`plan_expire`: which backups a policy keeps and which WAL may go, as data (pure: no I/O)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import attrs

from .. import _walnames
from ..catalog import Leftover, needs_of
from ..errors import ConfigurationError
from ..manifest import BackupManifest
from .policy import RetentionPolicy

if TYPE_CHECKING:
    pass


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


class _Reasons(dict[str, list[str]]):
    """Why each kept backup is kept (a backup without an entry is expired)."""

    def keep(self, backup_id: str, why: str) -> None:
        found = self.setdefault(backup_id, [])
        if why not in found:
            found.append(why)


def _keep_in_series(
    reasons: _Reasons,
    name: str,
    items: list[BackupManifest],
    policy: RetentionPolicy,
    now: datetime,
    gfs: list[tuple[str, Any, set[Any]]],
    by_id: dict[str, BackupManifest],
) -> None:
    """The newest backup of a series, its last ``keep_last`` full ones (and their incrementals), the young ones,
    and the newest of each grandfather-father-son period."""
    label = name.replace("logical:", "logical backup of ") if name.startswith("logical:") else f"{name} backup"
    reasons.keep(items[-1].id, f"newest {label}")
    if policy.keep_last:
        fulls = [m for m in items if _is_full(m)][-policy.keep_last :]
        kept_roots = {m.id for m in fulls}
        for m in fulls:
            reasons.keep(m.id, f"one of the last {policy.keep_last} full backup(s)")
        for m in items:
            root = None if _is_full(m) else _root(m, by_id)
            if root in kept_roots:
                reasons.keep(m.id, f"incremental on {root}, one of the last {policy.keep_last} full backup(s)")
    if policy.keep_days:
        cutoff = now - timedelta(days=policy.keep_days)
        for m in items:
            if m.started_at >= cutoff:
                reasons.keep(m.id, f"younger than {policy.keep_days} day(s)")
    for rule, key_of, wanted in gfs:
        newest: dict[Any, BackupManifest] = {}
        for m in items:  # oldest first: the last one seen in a period is its newest
            k = key_of(m.started_at.date())
            if k in wanted:
                newest[k] = m
        for k, m in newest.items():
            reasons.keep(m.id, _period_label(rule, k))


def _keep_window_start(
    reasons: _Reasons, policy: RetentionPolicy, backups: list[BackupManifest], now: datetime
) -> None:
    """The base backup that recovery to the start of the PITR window starts from."""
    window = policy.pitr_window
    bases = [m for m in backups if m.physical is not None]
    if window is not None and bases:
        start = now - window
        before = [m for m in bases if m.finished_at <= start]
        if before:
            reasons.keep(
                before[-1].id, f"start of the {window.days}-day PITR window (newest base backup finished before it)"
            )
        else:
            reasons.keep(bases[0].id, f"start of the {window.days}-day PITR window (oldest base backup)")


def _keep_what_kept_ones_need(reasons: _Reasons, by_id: dict[str, BackupManifest]) -> None:
    todo = list(reasons)
    while todo:  # whatever a kept incremental backup is built on is kept, transitively
        m = by_id[todo.pop()]
        for dep in needs_of(m):
            if dep in by_id:
                first = dep not in reasons
                reasons.keep(dep, f"needed by incremental backup {m.id}")
                if first:
                    todo.append(dep)


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
    reasons = _Reasons()
    series: dict[str, list[BackupManifest]] = {}
    for m in backups:
        series.setdefault(series_of(m), []).append(m)
    gfs = _gfs_keys(now, policy)
    for name, items in series.items():
        _keep_in_series(reasons, name, items, policy, now, gfs, by_id)
    _keep_window_start(reasons, policy, backups, now)
    for busy in in_progress:  # an incremental backup being written takes files from these
        for dep in busy.needs or ():
            if dep in by_id:
                reasons.keep(dep, f"needed by backup {busy.id}, in progress")
    _keep_what_kept_ones_need(reasons, by_id)

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


__all__ = ["Decision", "ExpirePlan", "WalDecision", "plan_expire", "series_of"]
