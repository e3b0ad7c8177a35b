"""Repository copies (3-2-1): complete, verified, safe to interrupt and rerun; and the rule's check."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fsspec
import pytest
from fakes import backup_with_parts as backup
from fsspec.implementations.local import LocalFileSystem

from pgrecovery import Repository, StorageError
from pgrecovery.cli.main import main
from pgrecovery.codec import compress_bytes
from pgrecovery.copies import check_321, copy_repository
from pgrecovery.wal.archiver import object_key

T0 = datetime(2026, 11, 24, 10, 15, tzinfo=UTC)


def wal(repo: Repository, segno: int) -> str:
    name = f"00000001000000000000{segno:04X}"
    raw = os.urandom(1000) * 16
    key = object_key(name, hashlib.sha256(raw).hexdigest(), "zstd")
    repo.put_bytes(key, compress_bytes(raw, "zstd"))
    return key


def snapshot(repo: Repository) -> dict[str, bytes]:
    """Every object but the start markers (a copy writes its own), by key."""
    return {k: repo.read_bytes(k) for k in repo.list_keys() if not k.endswith("started.json")}


@pytest.fixture
def source(tmp_path: Path) -> Repository:
    repo = Repository(str(tmp_path / "source"))
    for day in range(3):
        backup(repo, T0 + timedelta(days=day))
    for segno in range(1, 9):
        wal(repo, segno)
    return repo


def test_copy_brings_the_other_side_level_and_a_rerun_copies_nothing(source: Repository, tmp_path: Path) -> None:
    target = Repository(str(tmp_path / "copy"))
    first = copy_repository(source, target)
    assert first.ok
    assert len(first.backups_copied) == 3
    assert first.wal_copied == 8
    assert snapshot(target) == snapshot(source)
    assert [m.id for m in target.backups()] == [m.id for m in source.backups()]

    # new work on the source: only that travels
    newer = backup(source, T0 + timedelta(days=5))
    wal(source, 9)
    second = copy_repository(source, target)
    assert second.backups_copied == (newer.id,)
    assert second.wal_copied == 1
    assert len(second.backups_present) == 3
    assert second.wal_present == 8
    assert snapshot(target) == snapshot(source)
    assert copy_repository(source, target).bytes_copied == 0


class _FailingFS(LocalFileSystem):  # type: ignore[misc]
    """Local files seen as an object store (uploads commit on close) whose writes fail after a number of them,
    like a copy whose connection dies half-way."""

    protocol = "failing"
    writes_left = 0

    def open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        if "w" in mode or "x" in mode:
            if _FailingFS.writes_left <= 0:
                raise ConnectionError("connection reset by peer")
            _FailingFS.writes_left -= 1
        return super().open(path, mode, **kwargs)


@pytest.mark.parametrize("writes_before_failure", [0, 3, 9, 14, 17])
def test_interrupted_copy_lists_nothing_incomplete_and_a_rerun_ends_identical(
    source: Repository, tmp_path: Path, writes_before_failure: int
) -> None:
    target_root = str(tmp_path / "copy")
    os.makedirs(target_root)
    _FailingFS.writes_left = writes_before_failure
    broken = Repository(fs=_FailingFS(), root=target_root)
    with pytest.raises((StorageError, OSError)):
        copy_repository(source, broken, workers=2)
    # whatever arrived: every listed backup is complete and intact
    healthy = Repository(str(tmp_path / "copy"))
    for m in healthy.backups():
        for f in m.files:
            assert healthy.digest(f"backups/{m.id}/{f.path}") == (f.size, f.sha256)
    result = copy_repository(source, healthy)
    assert result.ok
    assert snapshot(healthy) == snapshot(source)


def test_a_corrupt_source_object_is_not_spread(source: Repository, tmp_path: Path) -> None:
    victim = source.backups()[1]
    path = source.local_path(f"backups/{victim.id}/{victim.files[0].path}")
    assert path is not None
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    bad_wal = source.list_keys("wal")[2]
    wal_path = source.local_path(bad_wal)
    assert wal_path is not None
    wal_path.write_bytes(compress_bytes(b"not the segment that was archived", "zstd"))

    target = Repository(str(tmp_path / "copy"))
    result = copy_repository(source, target)
    assert not result.ok
    assert sorted(result.corrupt) == sorted([f"backups/{victim.id}/{victim.files[0].path}", bad_wal])
    assert victim.id not in [m.id for m in target.backups()]  # never listed there
    assert len(target.backups()) == 2
    assert not target.exists(bad_wal)


def test_a_different_object_on_the_other_side_is_never_overwritten(source: Repository, tmp_path: Path) -> None:
    target = Repository(str(tmp_path / "copy"))
    first = source.backups()[0]
    target.put_bytes(f"backups/{first.id}/manifest.json", b'{"something": "else"}')
    result = copy_repository(source, target)
    assert result.conflicts
    assert first.id in result.conflicts[0]
    assert target.read_bytes(f"backups/{first.id}/manifest.json") == b'{"something": "else"}'
    assert len(result.backups_copied) == 2


def test_copy_onto_itself_is_refused(source: Repository) -> None:
    from pgrecovery import ConfigurationError

    with pytest.raises(ConfigurationError, match="onto itself"):
        copy_repository(source, Repository(source.root))


def test_cli_copy_json(source: Repository, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    to = str(tmp_path / "copy")
    assert main(["copy", "--repo", source.root, "--to", to, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is True
    assert len(out["backups_copied"]) == 3
    assert out["wal_copied"] == 8
    assert set(out) == {
        "source",
        "target",
        "ok",
        "backups_copied",
        "backups_present",
        "wal_copied",
        "wal_present",
        "bytes_copied",
        "seconds",
        "conflicts",
        "corrupt",
    }


def test_321_counts_copies_kinds_and_sites(source: Repository, tmp_path: Path) -> None:
    local_copy = Repository(str(tmp_path / "second-disk"))
    offsite = Repository(fs=fsspec.filesystem("memory"), root=f"/offsite-{os.getpid()}")

    report = check_321([source])
    assert not report.holds
    assert report.copies == 2  # production + the primary repository
    assert any("3 needed" in m for m in report.missing)
    assert any("one kind of storage" in m for m in report.missing)
    assert any("offsite" in m for m in report.missing)

    copy_repository(source, local_copy)
    report = check_321([source, local_copy])
    assert report.copies == 3
    assert report.kinds == ("disk",)
    assert not report.holds

    copy_repository(source, offsite)
    report = check_321([source, local_copy, offsite], sites={offsite.display_url: "other-region"})
    assert report.holds, report.missing
    assert report.offsite == 1
    assert report.kinds == ("disk", "memory")

    # a copy that falls behind no longer counts
    backup(source, T0 + timedelta(days=9))
    report = check_321([source, local_copy, offsite], sites={offsite.display_url: "other-region"})
    assert not report.holds
    assert report.copies == 2
    behind = [r for r in report.repositories if not r.holds_data]
    assert {r.repository for r in behind} == {local_copy.display_url, offsite.display_url}
    assert all("pgrecovery copy --to" in r.note for r in behind)


def test_cli_check_321_exit_codes(source: Repository, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-321", "--repo", source.root, "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["holds"] is False
    assert out["copies"] == 2
    second = str(tmp_path / "second")
    third = f"memory://third-{os.getpid()}"
    assert main(["copy", "--repo", source.root, "--to", second]) == 0
    assert main(["copy", "--repo", source.root, "--to", third]) == 0
    capsys.readouterr()
    args = ["check-321", "--repo", source.root, "--copy", second, "--copy", third, "--site", f"{third}=dc2"]
    assert main(args) == 0
    assert "3-2-1 rule holds" in capsys.readouterr().out
    assert main(["check-321", "--repo", source.root, "--site", "nonsense"]) == 2


def test_copy_between_encrypted_repositories_reencrypts(tmp_path: Path) -> None:
    from pgrecovery.crypto import EncryptionKey

    source = Repository(str(tmp_path / "source"), encryption=EncryptionKey.generate())
    for day in range(2):
        backup(source, T0 + timedelta(days=day))
    wal(source, 1)
    other_key = EncryptionKey.generate()
    target = Repository(str(tmp_path / "copy"), encryption=other_key)
    result = copy_repository(source, target)
    assert result.ok
    assert snapshot(target) == snapshot(source)  # the same content, read through each repository's key
    assert [m.encryption["key_id"] for m in target.backups() if m.encryption] == [source.encryption.key_id] * 2  # type: ignore[union-attr]
    first = f"backups/{result.backups_copied[0]}/data/part0"
    assert target._stored_digest(first) != source._stored_digest(first)  # encrypted anew, with the other key
    assert target.read_bytes(first) == source.read_bytes(first)
