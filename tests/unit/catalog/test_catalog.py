from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fakes import complete

from pgrecovery import BackupNotFound, Repository
from pgrecovery.catalog import claim_backup_id, clean_leftovers, leftovers


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository(str(tmp_path / "repo"))


T0 = datetime(2026, 11, 24, 10, 15, tzinfo=UTC)


def test_ids_sort_by_time_and_never_collide(repo: Repository) -> None:
    a = complete(repo, T0)
    b = complete(repo, T0)  # same second
    c = complete(repo, T0 + timedelta(hours=1), kind="globals")
    assert a.id == "20261124T101500Z-logical"
    assert b.id == "20261124T101500Z-logical-1"
    assert [m.id for m in repo.backups()] == [a.id, b.id, c.id]
    assert repo.get("latest").id == c.id
    assert repo.get("latest", "logical").id == b.id


def test_unfinished_backup_is_not_listed_and_can_be_cleaned(repo: Repository) -> None:
    done = complete(repo, T0)
    # a backup whose writer died: started marker from a process that no longer exists, data, no manifest
    repo.put_bytes(
        "backups/20261124T110000Z-logical/started.json",
        json.dumps(
            {"host": __import__("socket").gethostname(), "pid": 2**22 + 7, "started_at": T0.isoformat()}
        ).encode(),
    )
    repo.put_bytes("backups/20261124T110000Z-logical/data/dump", b"half")
    assert [m.id for m in repo.backups()] == [done.id]
    with pytest.raises(BackupNotFound):
        repo.get("20261124T110000Z-logical")
    [left] = leftovers(repo)
    assert left.reason == "interrupted (its process is gone)"
    assert [x.id for x in clean_leftovers(repo)] == ["20261124T110000Z-logical"]
    assert leftovers(repo) == []
    assert [m.id for m in repo.backups()] == [done.id]


def test_in_progress_backup_is_kept_by_clean(repo: Repository) -> None:
    claim_backup_id(repo, "logical", datetime.now(UTC))  # this very process: alive
    [left] = leftovers(repo)
    assert left.reason == "in progress"
    assert clean_leftovers(repo) == []
    assert len(clean_leftovers(repo, include_in_progress=True)) == 1


def test_unknown_and_latest_on_empty(repo: Repository) -> None:
    with pytest.raises(BackupNotFound, match="no complete backup"):
        repo.get("latest")
    with pytest.raises(BackupNotFound, match="'nope'"):
        repo.get("nope")
    with pytest.raises(BackupNotFound):
        repo.get("../etc")


def test_delete_removes_manifest_and_files(repo: Repository) -> None:
    m = complete(repo, T0)
    repo.delete_backup(m.id)
    assert repo.backups() == []
    assert repo.list_keys() == []


def test_damaged_manifest_is_skipped_in_listing(repo: Repository) -> None:
    good = complete(repo, T0)
    bad = complete(repo, T0 + timedelta(minutes=1))
    repo.put_bytes(f"backups/{bad.id}/manifest.json", b"{not json", overwrite=True)
    assert [m.id for m in repo.backups()] == [good.id]


def test_clean_removes_temporary_files_of_killed_writes(repo: Repository, capsys: pytest.CaptureFixture[str]) -> None:
    import os
    import time

    from pgrecovery.cli.main import main

    repo.put_bytes("wal/00000001/000000010000000000000001-x.zst", b"kept")
    old = Path(repo.root) / "wal" / "00000001" / ".000000010000000000000002-y.zst.0badc0de.tmp"
    fresh = old.with_name(".000000010000000000000003-z.zst.0badc0df.tmp")
    old.write_bytes(b"half a segment")
    fresh.write_bytes(b"being written right now")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert repo.stale_temp_files() == ["wal/00000001/" + old.name]
    assert main(["clean", "--repo", repo.root, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["temporary_files"] == ["wal/00000001/" + old.name]
    assert not old.exists()
    assert fresh.exists()  # may be a write in progress
    assert repo.read_bytes("wal/00000001/000000010000000000000001-x.zst") == b"kept"
