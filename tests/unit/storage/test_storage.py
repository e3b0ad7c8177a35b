from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import fsspec
import pytest

from pgrecovery import AlreadyExists, ConfigurationError, MissingDependency, Repository, StorageError


@pytest.fixture(params=["file", "memory"])
def any_repo(request: pytest.FixtureRequest, tmp_path: Path) -> Repository:
    if request.param == "file":
        return Repository(f"file://{tmp_path}/r")
    return Repository(f"memory://r-{uuid.uuid4().hex}")


def test_write_read_and_digest(any_repo: Repository) -> None:
    w = any_repo.writer("a/b/obj")
    w.write(b"hello ")
    w.write(b"world")
    obj = w.commit()
    assert obj.size == 11
    assert any_repo.read_bytes("a/b/obj") == b"hello world"
    assert any_repo.digest("a/b/obj") == (11, obj.sha256)
    assert any_repo.list_keys() == ["a/b/obj"]
    assert any_repo.children("a") == ["b"]


def test_never_overwrites_silently(any_repo: Repository) -> None:
    any_repo.put_bytes("k", b"one")
    with pytest.raises(AlreadyExists, match="refusing to overwrite 'k'"):
        any_repo.put_bytes("k", b"two")
    assert any_repo.read_bytes("k") == b"one"
    any_repo.put_bytes("k", b"two", overwrite=True)
    assert any_repo.read_bytes("k") == b"two"


def test_aborted_write_leaves_nothing(any_repo: Repository) -> None:
    def produce() -> None:
        with any_repo.writer("x/partial") as w:
            w.write(b"half of it")
            raise RuntimeError("producer died")

    with pytest.raises(RuntimeError):
        produce()
    assert not any_repo.exists("x/partial")
    assert any_repo.list_keys() == []


def test_local_write_is_invisible_until_commit(tmp_path: Path) -> None:
    repo = Repository(str(tmp_path / "r"))
    w = repo.writer("d/obj")
    w.write(b"data")
    assert not (tmp_path / "r" / "d" / "obj").exists()
    assert repo.list_keys() == []  # the temporary file is not listed
    w.commit()
    assert (tmp_path / "r" / "d" / "obj").read_bytes() == b"data"
    assert [p.name for p in (tmp_path / "r" / "d").iterdir()] == ["obj"]


def test_delete_prefix_and_missing(any_repo: Repository) -> None:
    any_repo.put_bytes("p/1", b"1")
    any_repo.put_bytes("p/2", b"2")
    any_repo.put_bytes("q", b"3")
    any_repo.delete_prefix("p")
    assert any_repo.list_keys() == ["q"]
    with pytest.raises(StorageError, match="'p/1' is missing"):
        any_repo.read_bytes("p/1")


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "."])
def test_bad_keys_refused(any_repo: Repository, key: str) -> None:
    with pytest.raises(ConfigurationError, match="invalid repository key"):
        any_repo.path(key)


def test_unknown_protocol() -> None:
    with pytest.raises(ConfigurationError, match="unknown storage protocol 'nosuch'"):
        Repository("nosuch://bucket/x")


def test_missing_extra_names_the_package() -> None:
    with pytest.raises(MissingDependency, match="extra package"):
        Repository("dropbox://folder/x")


def test_no_url() -> None:
    with pytest.raises(ConfigurationError, match="no repository given"):
        Repository("")


def test_path_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigurationError, match="is not a directory"):
        Repository(str(tmp_path / "f"))


def test_repr_hides_credentials() -> None:
    repo = Repository(fs=fsspec.filesystem("memory"), root="/r")
    assert "memory" in repr(repo)
    from pgrecovery._redact import redact_url

    assert redact_url("sftp://user:pw@host:22/path?token=abc") == "sftp://host:22/path"


def test_fsspec_instance_accepted(tmp_path: Path) -> None:
    repo = Repository(fs=fsspec.filesystem("file"), root=str(tmp_path / "x"))
    repo.put_bytes("k", b"v")
    assert os.path.exists(tmp_path / "x" / "k")


def test_an_unhashed_local_write_stores_the_same_bytes_and_object_stores_hash_regardless(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    local = Repository(f"file://{tmp_path}/repo")
    w = local.writer("wal/00000001/a", hashed=False)
    w.write(data)
    assert w.commit().sha256 == ""  # nothing hashed: the caller knows the content by its own digest
    assert local.read_bytes("wal/00000001/a") == data
    remote = Repository(f"memory://unhashed-{os.getpid()}")
    w3 = remote.writer("wal/00000001/c", hashed=False)
    w3.write(data)
    assert w3.commit().sha256 == hashlib.sha256(data).hexdigest()  # it checks what the store kept


def test_a_large_local_object_leaves_the_page_cache_once_written_and_once_read(tmp_path: Path) -> None:
    """A repository's objects are written once and read once: the pages of one of 1 MiB or more are dropped from
    the page cache after its fsync and after it is read (they would push the database's pages out, and make the
    next write take memory never used before); a small one (a manifest) stays; the content is untouched."""
    from pgtesting import cached_pages, page_cache_drops

    if not page_cache_drops(tmp_path):
        pytest.skip("this filesystem keeps a file's pages in memory whatever the advice (tmpfs)")
    repo = Repository(f"file://{tmp_path}/repo")
    big, small = os.urandom(4 << 20), os.urandom(4096)
    repo.put_bytes("wal/big", big)
    repo.put_bytes("wal/small", small)
    big_path, small_path = repo.local_path("wal/big"), repo.local_path("wal/small")
    assert big_path is not None
    assert small_path is not None
    assert cached_pages(big_path) == 0
    assert cached_pages(small_path) == 1
    with open(big_path, "rb") as f:  # (another reader brings it back)
        f.read()
    assert cached_pages(big_path) > 0
    with repo.open("wal/big") as f:
        assert f.read() == big
    assert cached_pages(big_path) == 0
    assert repo.read_bytes("wal/small") == small
