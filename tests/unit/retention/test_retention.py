"""Retention policies and `expire`, on synthetic catalogs spread over a year (manifests written with chosen times)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, timedelta

import pytest

from pgrecovery import (
    BackupManifest,
    ConfigurationError,
    FileEntry,
    Progress,
    Repository,
    RetentionPolicy,
    expire,
    retention,
)
from pgrecovery._walnames import history_name, segment_name, segment_number
from pgrecovery.catalog import Leftover, finish_backup, manifest_key, needs_of
from pgrecovery.cli import _retention as _cli_retention
from pgrecovery.cli.main import _common
from pgrecovery.manifest import MemberEntry, PhysicalInfo
from pgrecovery.retention import ExpirePlan, plan_expire
from pgrecovery.wal.archiver import WalArchiver, object_key

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)  # a Tuesday
DAY = timedelta(days=1)


# -- a synthetic catalog -----------------------------------------------------------------------------------------


class Catalog:
    """Manifests with chosen start times; base backups get consecutive WAL ranges (4 segments apart)."""

    def __init__(self) -> None:
        self.items: list[BackupManifest] = []
        self.next_segno = 16

    def logical(self, when: datetime, database: str = "shop", kind: str = "logical") -> BackupManifest:
        m = BackupManifest(
            id=f"{when:%Y%m%dT%H%M%SZ}-{kind}" + (f"-{database}" if kind == "logical" else ""),
            kind=kind,
            started_at=when,
            finished_at=when + timedelta(minutes=5),
            format="custom",
            compression="zstd",
            files=[FileEntry(path="data/dump.pgdump.zst", size=7, sha256="0" * 64, codec="zstd", role="dump")],
            database=database if kind == "logical" else None,
        )
        self.items.append(m)
        return m

    def base(self, when: datetime, parent: BackupManifest | None = None, timeline: int = 1) -> BackupManifest:
        backup_id = f"{when:%Y%m%dT%H%M%SZ}-base"
        chain = [backup_id]
        p = parent
        while p is not None:
            chain.append(p.id)
            assert p.physical is not None
            p = next((x for x in self.items if x.id == p.physical.parent), None) if p.physical.parent else None
        start = self.next_segno
        self.next_segno += 4
        m = BackupManifest(
            id=backup_id,
            kind="base",
            started_at=when,
            finished_at=when + timedelta(minutes=10),
            format="tar",
            compression="zstd",
            files=[FileEntry(path="data/base-0.tar.zst", size=7, sha256="0" * 64, codec="zstd", role="base-0")],
            physical=PhysicalInfo(
                method="local",
                label="t",
                start_lsn="0/0",
                stop_lsn="0/0",
                timeline=timeline,
                start_wal=segment_name(timeline, start),
                stop_wal=segment_name(timeline, start + 1),
                system_identifier="7",
                data_checksums=True,
                wal_segment_size=16 * 1024 * 1024,
                parent=parent.id if parent is not None else None,
                members=[
                    MemberEntry(path=f"f{i}", size=1, mtime=0, sha256="0" * 64, bundle="base-0", source=source)
                    for i, source in enumerate(chain)
                ],
            ),
        )
        self.items.append(m)
        return m


def days_back(n: int, hour: int = 2) -> list[datetime]:
    """One time per day for the last ``n`` days up to NOW's date, at ``hour``:00, oldest first."""
    today = NOW.replace(hour=hour, minute=0)
    return [today - i * DAY for i in reversed(range(n))]


def ids(items: Iterable[BackupManifest]) -> list[str]:
    return [m.id for m in items]


def on(cat: Catalog, *days: date) -> list[str]:
    """The ids of the catalog's backups that started on these dates."""
    wanted = set(days)
    return [m.id for m in cat.items if m.started_at.date() in wanted]


# -- policies, pure ----------------------------------------------------------------------------------------------


def test_keep_last_counts_full_backups_per_series_and_kind() -> None:
    cat = Catalog()
    for when in days_back(365):
        cat.base(when)
        if when.weekday() == 6:
            cat.logical(when + timedelta(hours=1), "shop")
            cat.logical(when + timedelta(hours=2), "crm")
        if when.day == 1:
            cat.logical(when, kind="globals")
    plan = plan_expire(cat.items, RetentionPolicy(keep_last=3), NOW)

    def last3(pred: Callable[[BackupManifest], bool]) -> list[str]:
        return [m.id for m in cat.items if pred(m)][-3:]

    want = set(
        last3(lambda m: m.kind == "base")
        + last3(lambda m: m.database == "shop")
        + last3(lambda m: m.database == "crm")
        + last3(lambda m: m.kind == "globals")
    )
    assert set(plan.kept_ids) == want
    assert set(plan.expired_ids) == set(ids(cat.items)) - want
    assert len(plan.kept) == 12
    assert all(d.reasons[0].startswith("outside the policy") for d in plan.expired)
    # WAL: continuous from the start of the oldest kept base backup
    oldest_kept = next(m for m in cat.items if m.id == last3(lambda m: m.kind == "base")[0])
    assert oldest_kept.physical is not None
    assert plan.wal.mode == "continuous"
    assert plan.wal.keep_from == oldest_kept.physical.start_wal
    assert plan.wal.backup_id == oldest_kept.id


def test_keep_last_keeps_the_incrementals_built_on_kept_fulls() -> None:
    cat = Catalog()
    parent = None
    for when in days_back(70):
        parent = cat.base(when, parent=None if when.weekday() == 6 or parent is None else parent)
    fulls = [m for m in cat.items if m.physical is not None and m.physical.parent is None]
    plan = plan_expire(cat.items, RetentionPolicy(keep_last=2), NOW)
    since = fulls[-2].started_at
    assert plan.kept_ids == [m.id for m in cat.items if m.started_at >= since]
    incr = next(d for d in plan.kept if d.id == cat.items[-1].id)
    assert any(r.startswith(f"incremental on {fulls[-1].id}") for r in incr.reasons)


def test_keep_days_keeps_young_backups_and_the_chain_they_are_built_on() -> None:
    cat = Catalog()
    parent = None
    for when in days_back(60):
        parent = cat.base(when, parent=None if when.weekday() == 6 or parent is None else parent)
    plan = plan_expire(cat.items, RetentionPolicy(keep_days=3, wal=False), NOW)
    young = [m for m in cat.items if m.started_at >= NOW - 3 * DAY]
    assert [m.started_at.date() for m in young] == [date(2026, 11, 22), date(2026, 11, 23), date(2026, 11, 24)]
    # 11-22 is a Sunday: a full backup; the two after it are incremental on it, nothing older is needed
    assert plan.kept_ids == ids(young)
    plan = plan_expire(cat.items, RetentionPolicy(keep_days=1, wal=False), NOW)
    # only 11-24 is young; it is built on 11-23, which is built on the full of 11-22
    assert plan.kept_ids == on(cat, date(2026, 11, 22), date(2026, 11, 23), date(2026, 11, 24))
    reasons = {d.id: set(d.reasons) for d in plan.kept}
    assert reasons[on(cat, date(2026, 11, 22))[0]] == {
        f"needed by incremental backup {on(cat, date(2026, 11, 23))[0]}",
        f"needed by incremental backup {on(cat, date(2026, 11, 24))[0]}",
    }


def test_grandfather_father_son_keeps_the_newest_of_each_period() -> None:
    cat = Catalog()
    for when in days_back(365):
        cat.base(when)
    plan = plan_expire(cat.items, RetentionPolicy(daily=7, weekly=4, monthly=12, yearly=2), NOW)
    want = [
        date(2025, 12, 31),  # monthly 2025-12, yearly 2025
        date(2026, 1, 31),
        date(2026, 2, 28),
        date(2026, 3, 31),
        date(2026, 4, 30),
        date(2026, 5, 31),
        date(2026, 6, 30),
        date(2026, 7, 31),
        date(2026, 8, 31),
        date(2026, 9, 30),
        date(2026, 10, 31),
        date(2026, 11, 8),  # weekly: the Sundays ending the three previous ISO weeks
        date(2026, 11, 15),
        *(date(2026, 11, d) for d in range(18, 25)),  # daily (11-22 is weekly too; 11-24 all four)
    ]
    assert [d.started_at.date() for d in plan.kept] == want
    reasons = {d.started_at.date(): d.reasons for d in plan.kept}
    assert reasons[date(2025, 12, 31)] == ("monthly 2025-12", "yearly 2025")
    assert reasons[date(2026, 11, 22)] == ("daily 2026-11-22", "weekly 2026-W47")
    assert set(reasons[date(2026, 11, 24)]) == {
        "newest base backup",
        "daily 2026-11-24",
        "weekly 2026-W48",
        "monthly 2026-11",
        "yearly 2026",
    }
    assert len(plan.expired) == 365 - len(want)


def test_production_preset_keeps_30_days_and_the_backup_that_starts_the_pitr_window() -> None:
    cat = Catalog()
    for when in days_back(365):
        if when.weekday() == 6:  # weekly base backups, daily logical ones
            cat.base(when)
        cat.logical(when + timedelta(hours=1))
    plan = plan_expire(cat.items, RetentionPolicy.production(), NOW)
    window_start = NOW - 30 * DAY
    young = [m.id for m in cat.items if m.started_at >= window_start]
    bases = [m for m in cat.items if m.kind == "base"]
    anchor = [m for m in bases if m.finished_at <= window_start][-1]
    assert anchor.started_at.date() == date(2026, 10, 25)  # the Sunday whose backup ended before 12:00
    assert plan.kept_ids == [m.id for m in cat.items if m.id == anchor.id or m.id in young]
    assert any("PITR window" in r for d in plan.kept if d.id == anchor.id for r in d.reasons)
    assert anchor.physical is not None
    assert plan.wal.keep_from == anchor.physical.start_wal
    assert plan.wal.mode == "continuous"


def test_presets_by_name_and_their_rules() -> None:
    assert RetentionPolicy.preset("production") == RetentionPolicy.production()
    assert set(retention.PRESETS) == set(_cli_retention.PRESET_NAMES) == set(retention.PRESET_NAMES)
    crit, dev, arch = RetentionPolicy.critical(), RetentionPolicy.development(), RetentionPolicy.archive()
    assert (crit.schedule, crit.keep_days, crit.wal, crit.pitr_window) == ("hourly", 90, True, timedelta(days=90))
    assert (dev.schedule, dev.keep_days, dev.wal, dev.pitr_window) == ("weekly", 7, False, None)
    assert (arch.schedule, arch.keep_days, arch.wal) == ("monthly", 365, False)
    with pytest.raises(ConfigurationError, match="unknown retention preset 'nightly'"):
        RetentionPolicy.preset("nightly")


def test_archive_preset_keeps_a_year_of_monthly_backups_and_only_their_wal() -> None:
    cat = Catalog()
    for when in days_back(800):
        if when.day == 1:
            cat.base(when)
    plan = plan_expire(cat.items, RetentionPolicy.archive(), NOW)
    assert [d.started_at.date() for d in plan.kept] == [date(2025, 12, 1)] + [date(2026, m, 1) for m in range(1, 12)]
    assert plan.wal.mode == "consistency"
    kept = [m for m in cat.items if m.id in plan.kept_ids]
    assert [(t, a, b) for t, a, b in plan.wal.ranges] == [
        (1, segment_number(m.physical.start_wal), segment_number(m.physical.stop_wal))  # type: ignore[union-attr]
        for m in kept
    ]


def test_critical_preset_keeps_every_hourly_backup_of_90_days() -> None:
    cat = Catalog()
    start = NOW - 120 * DAY
    for h in range(0, 120 * 24, 6):  # every 6 hours is enough to check the boundary
        cat.base(start + timedelta(hours=h, minutes=30))
    plan = plan_expire(cat.items, RetentionPolicy.critical(), NOW)
    young = [m.id for m in cat.items if m.started_at >= NOW - 90 * DAY]
    anchor = [m for m in cat.items if m.finished_at <= NOW - 90 * DAY][-1]
    assert plan.kept_ids == [anchor.id, *young]


def test_newest_backup_of_each_kind_and_database_is_never_deleted() -> None:
    cat = Catalog()
    old_globals = cat.logical(NOW - 60 * DAY, kind="globals")
    old_cluster = cat.logical(NOW - 200 * DAY, kind="cluster")
    old_crm = cat.logical(NOW - 90 * DAY, "crm")
    cat.logical(NOW - 100 * DAY, "crm")
    old_base = cat.base(NOW - 40 * DAY)
    for when in days_back(10):
        cat.logical(when, "shop")
    plan = plan_expire(cat.items, RetentionPolicy(keep_days=7, wal=False), NOW)
    assert {old_globals.id, old_cluster.id, old_crm.id, old_base.id} <= set(plan.kept_ids)
    assert len(plan.expired) == 1 + 3  # the older crm backup and the shop backups of 8-10 days ago
    reasons = {d.id: d.reasons for d in plan.kept}
    assert reasons[old_crm.id] == ("newest logical backup of crm",)
    assert reasons[old_base.id] == ("newest base backup",)


def test_policy_is_validated() -> None:
    with pytest.raises(ConfigurationError, match="at least one rule"):
        RetentionPolicy()
    with pytest.raises(ConfigurationError, match="keep_last must be a whole number"):
        RetentionPolicy(keep_last=-1)
    with pytest.raises(ConfigurationError, match="pitr_days needs wal=True"):
        RetentionPolicy(keep_last=1, wal=False, pitr_days=3)
    with pytest.raises(ConfigurationError, match="no time zone"):
        plan_expire([], RetentionPolicy(keep_last=1), datetime(2026, 1, 1))
    p = RetentionPolicy(keep_last=2, weekly=4)
    assert p.pitr_window is None
    assert p.describe() == (
        "custom: keep the last 2 full backup(s); the newest backup of each of the last 4 weeks; continuous WAL"
    )


# -- expire on a repository --------------------------------------------------------------------------------------


@pytest.fixture(params=["file", "memory"])
def repo(request: pytest.FixtureRequest, tmp_path: object) -> Repository:
    if request.param == "memory":
        return Repository(f"memory://retention-{uuid.uuid4().hex}")
    return Repository(f"file://{tmp_path}/repo")


def store(repo: Repository, cat: Catalog) -> None:
    """Write the catalog as complete backups (started marker, a data file, the manifest)."""
    for m in cat.items:
        repo.put_bytes(f"backups/{m.id}/started.json", b"{}")
        repo.put_bytes(f"backups/{m.id}/{m.files[0].path}", b"payload")
        finish_backup(repo, m)


def archive_wal(repo: Repository, first: int, last: int, timeline: int = 1) -> list[str]:
    """Archived segments ``first``..``last`` (fake contents under their digests), a history file and a .backup."""
    names = [segment_name(timeline, n) for n in range(first, last + 1)]
    names.append(f"{segment_name(timeline, first + 4)}.00000028.backup")
    if timeline > 1:
        names.append(history_name(timeline))
    for name in names:
        data = name.encode()
        repo.put_bytes(object_key(name, hashlib.sha256(data).hexdigest(), "none"), data)
    return names


def archived(repo: Repository) -> list[str]:
    archiver = WalArchiver(repo)
    return sorted(n for t in archiver.timelines() for n in archiver.index(t))


def weekly_chain(cat: Catalog, weeks: int) -> None:
    """A full base backup every Sunday and incremental ones on the other days, plus a daily logical backup."""
    parent = None
    for when in days_back(weeks * 7):
        parent = cat.base(when, parent=None if when.weekday() == 6 or parent is None else parent)
        cat.logical(when + timedelta(hours=1))


def test_expire_deletes_what_the_policy_does_not_keep_then_old_wal(repo: Repository) -> None:
    cat = Catalog()
    weekly_chain(cat, 6)
    store(repo, cat)
    wal = archive_wal(repo, 16, cat.next_segno + 3)
    policy = RetentionPolicy(keep_last=2, keep_days=3)

    dry = expire(repo, policy, now=NOW, dry_run=True)
    assert ids(repo.backups()) == ids(cat.items)  # nothing touched
    assert archived(repo) == sorted(wal)

    result = expire(repo, policy, now=NOW)
    plan = result.plan
    assert dry.plan == plan
    assert dry.deleted == result.deleted
    assert dry.wal_removed == result.wal_removed
    kept = [m for m in cat.items if m.id in plan.kept_ids]
    assert ids(repo.backups()) == ids(kept)
    fulls = [m for m in cat.items if m.kind == "base" and m.physical and m.physical.parent is None]
    # base: the last two full backups and the incremental ones on them; logical: the newest 3 (of 3 days)
    assert ids(m for m in kept if m.kind == "base") == ids(
        m for m in cat.items if m.kind == "base" and m.started_at >= fulls[-2].started_at
    )
    assert ids(m for m in kept if m.kind == "logical") == ids(m for m in cat.items if m.kind == "logical")[-3:]
    for backup_id in result.deleted:
        assert repo.list_keys(f"backups/{backup_id}") == []
    for m in kept:  # kept backups are untouched
        assert repo.read_bytes(f"backups/{m.id}/{m.files[0].path}") == b"payload"
    # WAL: everything older than the oldest kept base backup's start goes, history files never
    cutoff = segment_number(fulls[-2].physical.start_wal)  # type: ignore[union-attr]
    assert plan.wal.keep_from == fulls[-2].physical.start_wal  # type: ignore[union-attr]
    assert archived(repo) == sorted(n for n in wal if segment_number(n[:24]) >= cutoff)
    assert sorted(result.wal_removed) == sorted(n for n in wal if segment_number(n[:24]) < cutoff)
    # nothing left to do
    again = expire(repo, policy, now=NOW)
    assert again.deleted == ()
    assert again.wal_removed == ()


def test_no_wal_policy_keeps_only_what_each_kept_backup_needs(repo: Repository) -> None:
    cat = Catalog()
    for when in days_back(30):
        if when.weekday() in (2, 6):
            cat.base(when)
    store(repo, cat)
    wal = archive_wal(repo, 16, cat.next_segno + 3)
    wal += archive_wal(repo, 20, 22, timeline=2)  # a timeline no kept backup is on, with its history file
    result = expire(repo, RetentionPolicy(keep_last=3, wal=False), now=NOW)
    kept = [m for m in cat.items if m.id in result.plan.kept_ids]
    assert len(kept) == 3
    needed = set()
    for m in kept:
        assert m.physical is not None
        needed |= set(range(segment_number(m.physical.start_wal), segment_number(m.physical.stop_wal) + 1))
    newest_stop = segment_number(kept[-1].physical.stop_wal)  # type: ignore[union-attr]
    # each kept backup's own range stays (with its .backup file), everything after the newest one, history files
    want = [
        n
        for n in wal
        if n.endswith(".history")
        or segment_number(n[:24]) > newest_stop
        or (n.startswith("00000001") and segment_number(n[:24]) in needed)
    ]
    assert archived(repo) == sorted(want)
    expired_backup_file = f"{segment_name(1, 20)}.00000028.backup"  # of the second, expired backup
    assert expired_backup_file in wal
    assert expired_backup_file not in archived(repo)
    for m in kept:  # each kept backup can still be made consistent
        assert m.physical is not None
        assert not WalArchiver(repo).missing(m.physical.start_wal, m.physical.stop_wal)


def test_no_wal_policy_leaves_the_gaps_while_a_base_backup_is_in_progress() -> None:
    cat = Catalog()
    for when in days_back(10):
        cat.base(when)
    busy = Leftover(id="20261124T110000Z-base", host="h", pid=1, started_at=NOW - timedelta(hours=1), reason="")
    plan = plan_expire(cat.items, RetentionPolicy(keep_last=3, wal=False), NOW, in_progress=[busy])
    assert plan.wal.keep_from == cat.items[-3].physical.start_wal  # type: ignore[union-attr]
    assert plan.wal.keep_after is None
    assert "in progress" in plan.wal.note
    logical = Leftover(id="20261101T110000Z-logical", host="h", pid=1, started_at=NOW - 30 * DAY, reason="")
    plan = plan_expire(cat.items, RetentionPolicy(keep_last=3, wal=False), NOW, in_progress=[logical])
    assert plan.wal.keep_after is not None  # a logical backup needs no WAL


def test_an_interrupted_expire_never_lists_half_deleted_backups_and_a_rerun_finishes(
    repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    cat = Catalog()
    weekly_chain(cat, 3)
    store(repo, cat)
    wal = archive_wal(repo, 16, cat.next_segno + 3)
    policy = RetentionPolicy(keep_last=1)
    by_id = {m.id: m for m in cat.items}

    # every listing seen while manifests go is consistent: a listed incremental backup's ancestors are listed
    real_delete = Repository.delete

    def checked_delete(self: Repository, key: str) -> None:
        real_delete(self, key)
        if key.endswith("/manifest.json"):
            listed = set(ids(self.backups()))
            for backup_id in listed:
                assert set(needs_of(by_id[backup_id])) <= listed

    monkeypatch.setattr(Repository, "delete", checked_delete)

    # the process dies after the data of one expired backup is deleted
    real_prefix = Repository.delete_prefix
    calls = []

    def dying(self: Repository, prefix: str) -> None:
        calls.append(prefix)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_prefix(self, prefix)

    monkeypatch.setattr(Repository, "delete_prefix", dying)
    with pytest.raises(KeyboardInterrupt):
        expire(repo, policy, now=NOW)
    plan = plan_expire(cat.items, policy, NOW)
    assert ids(repo.backups()) == plan.kept_ids  # nothing half-deleted is listed
    assert archived(repo) == sorted(wal)  # WAL is the last step: untouched so far
    left = [i for i in plan.expired_ids if repo.list_keys(f"backups/{i}")]
    assert len(left) == len(plan.expired_ids) - 1

    monkeypatch.setattr(Repository, "delete_prefix", real_prefix)
    dry = expire(repo, policy, now=NOW, dry_run=True)
    assert sorted(dry.resumed) == sorted(left)
    result = expire(repo, policy, now=NOW)
    assert sorted(result.resumed) == sorted(left)
    assert result.deleted == ()
    assert repo.children("backups") == plan.kept_ids
    assert plan.wal.keep_from is not None
    assert result.wal_removed == tuple(sorted(n for n in wal if n < plan.wal.keep_from))  # the WAL step ran now
    assert all(n >= plan.wal.keep_from for n in archived(repo))


def test_a_base_backup_in_progress_keeps_the_wal(repo: Repository) -> None:
    now = datetime.now(UTC)  # "in progress" is judged against the clock: started under 24 hours ago, alive
    cat = Catalog()
    for minutes in (50, 40, 30, 20):
        cat.base(now - timedelta(minutes=minutes))
    store(repo, cat)
    wal = archive_wal(repo, 16, cat.next_segno + 3)
    busy = f"{now - timedelta(minutes=55):%Y%m%dT%H%M%SZ}-base-1"
    marker = {"host": socket.gethostname(), "pid": os.getpid(), "started_at": (now - timedelta(minutes=55)).isoformat()}
    repo.put_bytes(f"backups/{busy}/started.json", json.dumps(marker).encode())
    result = expire(repo, RetentionPolicy(keep_last=2), now=now)
    assert len(result.deleted) == 2
    assert result.plan.wal.keep_from is None
    assert f"base backup {busy} is in progress" in result.plan.wal.note
    assert archived(repo) == sorted(wal)
    assert repo.list_keys(f"backups/{busy}") == [f"backups/{busy}/started.json"]  # never touched


def test_an_unreadable_manifest_keeps_the_wal_and_its_backup(repo: Repository) -> None:
    cat = Catalog()
    for when in days_back(5):
        cat.base(when)
    store(repo, cat)
    wal = archive_wal(repo, 16, cat.next_segno + 3)
    newer = json.loads(repo.read_bytes(manifest_key(cat.items[0].id)))
    newer["schema_version"] = 99
    repo.put_bytes(manifest_key(cat.items[0].id), json.dumps(newer).encode(), overwrite=True)
    result = expire(repo, RetentionPolicy(keep_last=1), now=NOW)
    assert result.plan.wal.keep_from is None
    assert cat.items[0].id in result.plan.wal.note
    assert archived(repo) == sorted(wal)
    assert repo.exists(manifest_key(cat.items[0].id))
    assert len(result.deleted) == 3


def test_progress_counts_deleted_backups(repo: Repository) -> None:
    cat = Catalog()
    for when in days_back(4):
        cat.logical(when)
    store(repo, cat)
    events: list[Progress] = []
    expire(repo, RetentionPolicy(keep_last=1), now=NOW, progress=events.append)
    assert events[-1].finished
    assert (events[-1].done, events[-1].total) == (3, 3)


# -- the CLI verb ------------------------------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    from pgrecovery.cli.main import _Parser

    parser = _Parser(prog="pgrecovery", parents=[_common()])
    verbs = parser.add_subparsers(dest="verb", parser_class=_Parser)
    _cli_retention.add_verbs(verbs, _common())
    return parser.parse_args(list(argv))


def test_cli_options_override_the_preset() -> None:
    args = parse("expire", "--policy", "production", "--keep-last", "5", "--gfs", "7,4,12,2")
    assert _cli_retention.policy_from(args) == RetentionPolicy(
        name="production", schedule="daily", keep_days=30, keep_last=5, daily=7, weekly=4, monthly=12, yearly=2
    )
    assert _cli_retention.policy_from(parse("expire", "--policy", "archive", "--keep-days", "30")).keep_days == 30
    custom = _cli_retention.policy_from(parse("expire", "--keep-last", "2", "--no-wal"))
    assert (custom.name, custom.keep_last, custom.wal) == ("custom", 2, False)
    with pytest.raises(ConfigurationError, match="at least one rule"):
        _cli_retention.policy_from(parse("expire"))


@pytest.mark.parametrize("bad", [["--gfs", "7,4"], ["--keep-last", "-1"], ["--policy", "nightly"]])
def test_cli_rejects_bad_options(bad: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        parse("expire", *bad)
    assert e.value.code == 2


def test_cli_dry_run_json_and_text(repo: Repository, capsys: pytest.CaptureFixture[str]) -> None:
    cat = Catalog()
    today = datetime.now(UTC).replace(hour=0, minute=30, second=0, microsecond=0)  # the CLI plans for "now"
    for i in reversed(range(40)):
        cat.base(today - i * DAY)
    store(repo, cat)
    archive_wal(repo, 16, cat.next_segno + 3)
    url = repo.url
    assert _cli_retention.run(parse("--repo", url, "expire", "--policy", "production", "--dry-run", "--json")) == 0
    out = json.loads(capsys.readouterr().out)
    plan = plan_expire(cat.items, RetentionPolicy.production(), datetime.fromisoformat(out["now"]))
    assert out["dry_run"] is True
    assert out["policy"]["name"] == "production"
    assert [d["id"] for d in out["kept"]] == plan.kept_ids
    assert [d["id"] for d in out["expired"]] == plan.expired_ids
    assert out["deleted"] == plan.expired_ids[::-1]  # newest first
    assert len(plan.kept) == 31  # 30 days plus the backup that starts the PITR window
    assert out["kept"][0]["reasons"][0].startswith("start of the 30-day PITR window")
    assert out["wal"]["mode"] == "continuous"
    assert out["wal"]["keep_from"] == plan.wal.keep_from
    assert out["wal"]["removed_count"] == len(out["wal"]["removed"]) > 0
    assert set(out) == {"policy", "now", "kept", "expired", "wal", "dry_run", "deleted", "resumed"}
    assert len(repo.backups()) == 40  # a dry run

    assert _cli_retention.run(parse("--repo", url, "expire", "--policy", "production")) == 0
    text = capsys.readouterr().out
    assert text.startswith("policy production: keep backups younger than 30 day(s)")
    assert text.count("\nexpired ") == len(plan.expired)
    assert "WAL: removed " in text
    assert ids(repo.backups()) == plan.kept_ids


def test_plan_to_dict_is_json() -> None:
    cat = Catalog()
    for when in days_back(3):
        cat.base(when)
    plan: ExpirePlan = plan_expire(cat.items, RetentionPolicy.development(), NOW)
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["policy"]["keep_days"] == 7
    assert data["wal"]["keep_from"] == cat.items[0].physical.start_wal  # type: ignore[union-attr]
