"""restore_command's exit codes without a server: 0 delivered, 1 only for a confirmed miss, 255 for anything else
(a storage error or a corrupt object must stop recovery, not read as the end of the archive). Both through the
CLI's wal-fetch and through the script the generated command runs (``python -S _walcmd.py``)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from pgrecovery import Repository, _spool
from pgrecovery._walnames import segment_name
from pgrecovery.cli.main import main
from pgrecovery.codec import compress_bytes
from pgrecovery.errors import StorageError
from pgrecovery.wal._layout import object_key
from pgrecovery.wal.index import WalIndex

ARCHIVED, NOT_ARCHIVED = segment_name(1, 1), segment_name(1, 2)
WALCMD = str(Path(_spool.__file__).resolve().with_name("_walcmd.py"))


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    repo = Repository(str(tmp_path / "repo"))
    raw = b"segment" * 1000
    repo.put_bytes(object_key(ARCHIVED, hashlib.sha256(raw).hexdigest(), "zstd"), compress_bytes(raw, "zstd"))
    return repo


def fetch(repo: Repository, name: str, dest: Path) -> int:
    return main(["wal-fetch", "--repo", repo.url, "--no-prefetch", name, str(dest)])


def test_delivered_is_0(repo: Repository, tmp_path: Path) -> None:
    assert fetch(repo, ARCHIVED, tmp_path / "RECOVERYXLOG") == 0
    assert (tmp_path / "RECOVERYXLOG").read_bytes() == b"segment" * 1000


def test_a_confirmed_miss_is_1(repo: Repository, tmp_path: Path) -> None:
    assert fetch(repo, NOT_ARCHIVED, tmp_path / "RECOVERYXLOG") == 1
    assert not (tmp_path / "RECOVERYXLOG").exists()


def test_no_archive_at_all_is_255(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = Repository(str(tmp_path / "empty"))
    assert fetch(empty, NOT_ARCHIVED, tmp_path / "RECOVERYXLOG") == 255
    assert "holds no WAL archive" in capsys.readouterr().err


def test_a_storage_error_is_255(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(self: WalIndex, timeline: int) -> dict[str, list[object]]:
        raise StorageError("cannot list wal/00000001: connection reset")

    monkeypatch.setattr(WalIndex, "index", broken)
    assert fetch(repo, NOT_ARCHIVED, tmp_path / "RECOVERYXLOG") == 255
    assert "connection reset" in capsys.readouterr().err


def test_a_corrupt_object_is_255_and_delivers_nothing(repo: Repository, tmp_path: Path) -> None:
    (key,) = [k for k in repo.list_keys("wal") if ARCHIVED in k]
    repo.delete(key)
    repo.put_bytes(key, compress_bytes(b"other content", "zstd"))
    assert fetch(repo, ARCHIVED, tmp_path / "RECOVERYXLOG") == 255
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]  # neither the file nor a temporary one


@pytest.mark.parametrize(("name", "code"), [(ARCHIVED, 0), (NOT_ARCHIVED, 1)])
def test_the_generated_script_exits_the_same(repo: Repository, tmp_path: Path, name: str, code: int) -> None:
    cmd = [sys.executable, "-S", WALCMD, "wal-fetch", "--repo", repo.url, "--no-prefetch", name, "RECOVERYXLOG"]
    assert subprocess.run(cmd, cwd=tmp_path, capture_output=True, check=False).returncode == code


def test_the_generated_script_exits_255_on_a_usage_error(tmp_path: Path) -> None:
    cmd = [sys.executable, "-S", WALCMD, "wal-fetch", "--repo", "file:///x", "--bogus", NOT_ARCHIVED, "RECOVERYXLOG"]
    assert subprocess.run(cmd, cwd=tmp_path, capture_output=True, check=False).returncode == 255


def test_commands_written_by_older_versions_still_work(repo: Repository, tmp_path: Path) -> None:
    """archive_command / restore_command set up before the entry script had its own file name the spool module:
    they must still archive and deliver (a script that did nothing and exited 0 would lose WAL)."""
    old_script = str(Path(_spool.__file__).resolve())
    pg_wal = tmp_path / "pg_wal"
    pg_wal.mkdir()
    segment = pg_wal / NOT_ARCHIVED
    segment.write_bytes(b"new segment" * 500)
    push = [sys.executable, "-S", old_script, "wal-push", "--repo", repo.url, str(segment)]
    assert subprocess.run(push, capture_output=True, check=False).returncode == 0
    assert WalIndex(repo).find(NOT_ARCHIVED) is not None
    dest = tmp_path / "RECOVERYXLOG"
    fetch_cmd = [
        sys.executable,
        "-S",
        old_script,
        "wal-fetch",
        "--repo",
        repo.url,
        "--no-prefetch",
        ARCHIVED,
        str(dest),
    ]
    assert subprocess.run(fetch_cmd, capture_output=True, check=False).returncode == 0
    assert dest.read_bytes() == b"segment" * 1000
    missing = [sys.executable, "-S", old_script, "wal-push", "--repo", repo.url, str(pg_wal / segment_name(1, 9))]
    assert subprocess.run(missing, capture_output=True, check=False).returncode != 0
