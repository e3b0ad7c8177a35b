"""Recovery planning without a server: which base backup a target needs (across timelines), and what the archive
must hold for it, decided from manifests and WAL object names in a memory repository."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import pytest

from pgrecovery import BackupManifest, ConfigurationError, RecoveryPlan, RecoveryTarget, Repository
from pgrecovery.errors import TargetUnreachable, WalGap
from pgrecovery.manifest import PhysicalInfo

DAY = datetime(2026, 3, 15, tzinfo=UTC)
SEGMENT = 16 * 1024 * 1024


def segment(timeline: int, number: int) -> str:
    return f"{timeline:08X}{0:08X}{number:08X}"


def put_wal(repo: Repository, name: str, content: bytes = b"") -> None:
    """Store an archived WAL file as the archiver names it: ``wal/<timeline>/<name>-<sha256 of its content>``."""
    digest = hashlib.sha256(content).hexdigest()
    repo.put_bytes(f"wal/{name[:8]}/{name}-{digest}", content)


def put_segments(repo: Repository, timeline: int, numbers: Iterable[int]) -> None:
    for n in numbers:
        put_wal(repo, segment(timeline, n))


def put_history(repo: Repository, timeline: int, *entries: tuple[int, str]) -> None:
    text = "".join(f"{parent}\t{lsn}\tno recovery target specified\n" for parent, lsn in entries)
    put_wal(repo, f"{timeline:08X}.history", text.encode())


def put_backup(repo: Repository, hour: int, *, timeline: int = 1, at: int, next_xid: int | None = None) -> str:
    """A base backup's manifest (no files: planning reads only the manifest) finished at ``hour`` o'clock, whose
    WAL starts and stops in segment ``at`` of ``timeline``."""
    finished = DAY + timedelta(hours=hour)
    backup_id = f"{finished:%Y%m%dT%H%M%SZ}-base"
    m = BackupManifest(
        id=backup_id,
        kind="base",
        started_at=finished - timedelta(minutes=5),
        finished_at=finished,
        format="tar",
        compression="none",
        files=[],
        server_version="15.18",
        physical=PhysicalInfo(
            method="local",
            label=backup_id,
            start_lsn=f"0/{at:X}000028",
            stop_lsn=f"0/{at:X}000100",
            timeline=timeline,
            start_wal=segment(timeline, at),
            stop_wal=segment(timeline, at),
            system_identifier="7400000000000000001",
            data_checksums=True,
            wal_segment_size=SEGMENT,
            next_xid=next_xid,
        ),
    )
    repo.put_bytes(f"backups/{backup_id}/manifest.json", m.to_json().encode())
    return backup_id


@pytest.fixture
def repo() -> Repository:
    """Two backups on timeline 1 (10:00 in segment 2, xid 700; 12:00 in segment 5, xid 900) and its WAL 2..8."""
    r = Repository(f"memory://plan-{uuid.uuid4().hex}")
    put_backup(r, 10, at=2, next_xid=700)
    put_backup(r, 12, at=5, next_xid=900)
    put_segments(r, 1, range(2, 9))
    return r


A, B = "20260315T100000Z-base", "20260315T120000Z-base"


def at(hour: float) -> RecoveryTarget:
    return RecoveryTarget.time(DAY + timedelta(hours=hour))


@pytest.mark.parametrize(
    ("target", "chosen"),
    [
        (at(11), A),  # the newest backup that ended before the target
        (at(13), B),
        (RecoveryTarget.latest(), B),
        (RecoveryTarget.immediate(), B),
        (RecoveryTarget.xid(800), A),
        (RecoveryTarget.lsn("0/6000000"), B),
        (RecoveryTarget.lsn("0/4000000"), A),
    ],
    ids=["time-between", "time-after", "latest", "immediate", "xid", "lsn-after", "lsn-between"],
)
def test_the_newest_backup_before_the_target_is_chosen(repo: Repository, target: RecoveryTarget, chosen: str) -> None:
    plan = RecoveryPlan(repo, target)
    assert plan.backup.id == chosen
    plan.validate()


def test_a_recorded_restore_point_chooses_the_newest_backup_before_it(repo: Repository) -> None:
    """A restore point's position is known before replay (here: recorded; test_restore_points.py finds them in
    real WAL): the newest backup ending before it is chosen, one ending after it is refused, an unknown name too."""
    from pgrecovery.wal.restore_points import RestorePoint, write_record

    write_record(repo, RestorePoint(name="before upgrade", lsn="0/4000100", timeline=1))
    plan = RecoveryPlan(repo, RecoveryTarget.name("before upgrade"))
    assert plan.backup.id == A
    assert plan.restore_point is not None
    assert (plan.restore_point.lsn, plan.restore_point.source) == ("0/4000100", "recorded")
    plan.validate()
    with pytest.raises(TargetUnreachable, match=r"\(LSN 0/4000100\) is before the end of backup .*stop LSN 0/5000100"):
        RecoveryPlan(repo, RecoveryTarget.name("before upgrade"), backup_id=B)
    with pytest.raises(TargetUnreachable, match="no restore point named 'elsewhere'"):
        RecoveryPlan(repo, RecoveryTarget.name("elsewhere"))


def test_a_target_before_the_oldest_backup_is_refused(repo: Repository) -> None:
    with pytest.raises(TargetUnreachable, match="before the end of the oldest base backup") as info:
        RecoveryPlan(repo, at(9))
    assert info.value.backup_id == A
    assert info.value.target == at(9).describe()


def test_a_chosen_backup_after_the_target_is_refused(repo: Repository) -> None:
    with pytest.raises(TargetUnreachable, match="choose an older backup") as info:
        RecoveryPlan(repo, at(11), backup_id=B)
    assert info.value.backup_id == B


def test_no_base_backup_is_refused() -> None:
    with pytest.raises(TargetUnreachable, match="no base backup"):
        RecoveryPlan(Repository(f"memory://plan-{uuid.uuid4().hex}"), RecoveryTarget.latest())


def test_a_wal_gap_is_named(repo: Repository) -> None:
    repo.delete(next(k for k in repo.list_keys("wal/00000001") if segment(1, 4) in k))
    plan = RecoveryPlan(repo, at(11))
    assert plan.backup.id == A
    with pytest.raises(WalGap, match=f"WAL segment {segment(1, 4)} is missing") as info:
        plan.validate()
    assert info.value.segment == segment(1, 4)
    assert info.value.backup_id == A
    assert RecoveryPlan(repo, at(13)).backup.id == B  # the later backup needs nothing before its start
    RecoveryPlan(repo, at(13)).validate()


def test_the_segment_that_makes_a_backup_consistent_is_required(repo: Repository) -> None:
    repo.delete(next(k for k in repo.list_keys("wal/00000001") if segment(1, 5) in k))
    with pytest.raises(WalGap) as info:
        RecoveryPlan(repo, RecoveryTarget.immediate()).validate()
    assert info.value.segment == segment(1, 5)
    assert info.value.backup_id == B


def test_a_future_time_is_refused(repo: Repository) -> None:
    plan = RecoveryPlan(repo, RecoveryTarget.time(datetime.now(UTC) + timedelta(days=1)))
    with pytest.raises(TargetUnreachable, match="in the future") as info:
        plan.validate()
    assert info.value.target == plan.target.describe()


@pytest.mark.parametrize("make", [RecoveryTarget.time, RecoveryTarget.xid, RecoveryTarget.lsn, RecoveryTarget.name])
def test_empty_targets_are_refused_before_any_plan(make: object) -> None:
    with pytest.raises(ConfigurationError, match="is empty"):
        make("  ")  # type: ignore[operator]


# -- timelines -------------------------------------------------------------------------------------------------


@pytest.fixture
def branched(repo: Repository) -> Repository:
    """Timeline 2 branched off timeline 1 at 0/6000000 (after both backups), with a backup at 14:00 in its
    segment 7 and its WAL 6..9; timeline 1 also went on to a backup at 13:00 in segment 8 (after the branch)."""
    put_history(repo, 2, (1, "0/6000000"))
    put_segments(repo, 2, range(6, 10))
    put_backup(repo, 14, timeline=2, at=7)
    put_backup(repo, 13, timeline=1, at=8)
    return repo


C, D = "20260315T140000Z-base", "20260315T130000Z-base"


def test_latest_follows_the_newest_timeline(branched: Repository) -> None:
    plan = RecoveryPlan(branched, RecoveryTarget.latest())
    assert plan.backup.id == C
    plan.validate()


def test_a_backup_taken_after_the_branch_is_not_on_the_new_timeline(branched: Repository) -> None:
    # D (timeline 1, ended after timeline 2 branched off) cannot reach timeline 2: B, before the branch, can
    assert RecoveryPlan(branched, at(13.5)).backup.id == B
    with pytest.raises(TargetUnreachable, match="is not on the history of target timeline") as info:
        RecoveryPlan(branched, RecoveryTarget.latest(), backup_id=D)
    assert info.value.backup_id == D


def test_the_old_timeline_can_be_asked_for(branched: Repository) -> None:
    plan = RecoveryPlan(branched, RecoveryTarget.latest().with_timeline(1))
    assert plan.backup.id == D
    assert RecoveryPlan(branched, at(13.5).with_timeline("current")).backup.id == D


def test_a_timeline_without_its_history_file_is_named(branched: Repository) -> None:
    put_segments(branched, 3, [9])  # timeline 3 has WAL, but its 00000003.history is gone
    with pytest.raises(WalGap, match=r"00000003\.history is missing") as info:
        RecoveryPlan(branched, RecoveryTarget.latest()).validate()
    assert info.value.key == "00000003.history"


def test_no_backup_on_the_target_timelines_history(branched: Repository) -> None:
    put_history(branched, 3, (1, "0/2000000"))  # timeline 3 branched off before every backup ended
    put_segments(branched, 3, [2, 3])
    with pytest.raises(TargetUnreachable, match="lies on the history of target timeline 3"):
        RecoveryPlan(branched, RecoveryTarget.latest().with_timeline(3))
