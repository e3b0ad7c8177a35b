"""The one skeleton every backup kind is taken in (`catalog.writing_backup`), on a memory repository."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from fakes import put_backup

from pgrecovery import BackupError, BackupManifest, FileEntry, Repository
from pgrecovery.catalog import data_key, leftovers, writing_backup
from pgrecovery.errors import ToolFailed
from pgrecovery.manifest import BackupKind

T0 = datetime(2026, 11, 24, 10, 15, tzinfo=UTC)


@pytest.fixture
def repo() -> Repository:
    return Repository(f"memory://writing-{uuid.uuid4().hex}")


def manifest(backup_id: str, kind: BackupKind, entry: FileEntry) -> BackupManifest:
    return BackupManifest(
        id=backup_id,
        kind=kind,
        started_at=T0,
        finished_at=T0 + timedelta(seconds=1),
        format="tar" if kind == "base" else "custom",
        compression="none",
        files=[entry],
    )


def write_file(repo: Repository, backup_id: str) -> FileEntry:
    obj = repo.put_bytes(data_key(backup_id, "dump"), b"payload")
    return FileEntry(path="data/dump", size=obj.size, sha256=obj.sha256, codec="none", role="dump")


def test_finish_makes_the_backup_complete_and_listed(repo: Repository) -> None:
    with writing_backup(repo, "logical", T0) as backup:
        assert backup.id == "20261124T101500Z-logical"
        assert [x.id for x in leftovers(repo)] == [backup.id]  # claimed: in progress until the manifest is there
        done = backup.finish(manifest(backup.id, "logical", write_file(repo, backup.id)))
    assert [m.id for m in repo.backups()] == [done.id]
    assert repo.get(done.id) == done
    assert leftovers(repo) == []


@pytest.mark.parametrize("kind", ["logical", "globals", "cluster", "base"])
def test_a_failure_removes_the_unfinished_backup(repo: Repository, kind: BackupKind) -> None:
    def fail_while_writing() -> str:
        with writing_backup(repo, kind, T0) as backup:
            write_file(repo, backup.id)
            raise RuntimeError(f"disk on fire under {backup.id}")

    with pytest.raises(RuntimeError, match="disk on fire") as info:
        fail_while_writing()
    backup_id = str(info.value).rsplit(" ", 1)[1]
    assert not any(k.startswith(f"backups/{backup_id}") for k in repo.list_keys())
    assert repo.backups() == []
    assert leftovers(repo) == []


def test_a_failing_program_becomes_a_backup_error_naming_the_backup(repo: Repository) -> None:
    with pytest.raises(BackupError) as info, writing_backup(repo, "logical", T0, source="database shop") as backup:
        raise ToolFailed("pg_dump exited with 1: no such table")
    assert str(info.value) == f"backup {backup.id} of database shop failed: pg_dump exited with 1: no such table"
    with pytest.raises(BackupError) as info, writing_backup(repo, "base", T0, title="base backup") as backup:
        raise ToolFailed("pg_basebackup exited with 1")
    assert str(info.value) == f"base backup {backup.id} failed: pg_basebackup exited with 1"
    assert leftovers(repo) == []


def test_leaving_the_block_without_finish_abandons_the_backup(repo: Repository) -> None:
    with writing_backup(repo, "globals", T0) as backup:
        write_file(repo, backup.id)
    assert backup.manifest is None
    assert repo.backups() == []
    assert leftovers(repo) == []


def test_a_needed_backup_that_went_meanwhile_refuses_the_finish(repo: Repository) -> None:
    parent = put_backup(repo, T0 - timedelta(days=1), kind="base")

    def finish_after_the_parent_went() -> None:
        with writing_backup(repo, "base", T0, needs=[parent.id]) as backup:
            entry = write_file(repo, backup.id)
            repo.delete_backup(parent.id)  # an expire or delete that did not see the claim yet
            backup.finish(manifest(backup.id, "base", entry))

    with pytest.raises(BackupError, match=f"takes files from backup {parent.id}, which was deleted or expired"):
        finish_after_the_parent_went()
    assert repo.backups() == []
    assert leftovers(repo) == []


def test_the_claim_records_what_the_backup_needs(repo: Repository) -> None:
    parent = put_backup(repo, T0 - timedelta(days=1), kind="base")
    with writing_backup(repo, "base", T0, needs=[parent.id]) as backup:
        (busy,) = leftovers(repo)
        assert busy.id == backup.id
        assert busy.needs == (parent.id,)
        backup.finish(manifest(backup.id, "base", write_file(repo, backup.id)))


def test_another_backups_manifest_cannot_finish_it(repo: Repository) -> None:
    with pytest.raises(ValueError, match="cannot finish"), writing_backup(repo, "logical", T0) as backup:
        backup.finish(manifest("20200101T000000Z-logical", "logical", write_file(repo, backup.id)))
    assert repo.backups() == []
