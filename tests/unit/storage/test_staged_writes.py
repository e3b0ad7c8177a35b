"""The storage contract on filesystems pgrecovery knows nothing about (server-free; the conformance suite in
tests/storage proves the same against real servers).

A write is reported stored only when the storage shows it stored: the filesystems here misbehave on purpose
(drop writes, lose bytes, corrupt them, cannot move, fail half-way through a copy) and every misbehaviour must
end in an error, never in a `StoredObject`, and never leave a partial object under the key.
"""

from __future__ import annotations

import uuid
from typing import Any

import fsspec
import pytest
from fsspec import AbstractFileSystem
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from pgrecovery import AlreadyExists, ConfigurationError, NotStored, Repository, StorageError
from pgrecovery.storage import RetryPolicy, capabilities_of

ONCE = RetryPolicy(attempts=1)


def _memory_root() -> str:
    return f"/staged-{uuid.uuid4().hex[:10]}"


class _Wrapper(MemoryFileSystem):  # type: ignore[misc]
    """A user's subclass that changes how files are opened: not the memory filesystem that was proven."""

    protocol = "memory"
    transform: Any = None

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        f = super()._open(path, mode, **kwargs)
        if "w" in mode and self.transform is not None:
            return self.transform(f)
        return f


class _Dropping:
    """A file that takes bytes and stores none of them (the base class's file, in effect)."""

    def __init__(self, f: Any) -> None:
        self._f = f

    def write(self, data: bytes) -> int:
        return len(data)

    def close(self) -> None:
        self._f.discard()


class _Truncating(_Dropping):
    def write(self, data: bytes) -> int:
        self._f.write(bytes(data)[: max(0, len(data) - 1)])
        return len(data)

    def close(self) -> None:
        self._f.close()


class _Flipping(_Dropping):
    def write(self, data: bytes) -> int:
        raw = bytearray(data)
        if raw:
            raw[0] ^= 0xFF
        self._f.write(bytes(raw))
        return len(data)

    def close(self) -> None:
        self._f.close()


def _wrapped(transform: Any) -> Repository:
    fs = _Wrapper(skip_instance_cache=True)
    fs.transform = transform
    return Repository(fs=fs, root=_memory_root(), retry_policy=ONCE)


def test_the_reported_bug_a_dirfs_write_is_stored() -> None:
    """DirFileSystem overrides only open(): a writer using _open() stored nothing and said it had."""
    fs = DirFileSystem(path=_memory_root(), fs=fsspec.filesystem("memory"))
    repo = Repository(fs=fs, root="r")
    assert not repo.capabilities.staged  # seen through: the memory filesystem's own writes, under its directory
    obj = repo.put_bytes("a/b.txt", b"hi" * 1000)
    assert obj.size == 2000
    assert repo.exists("a/b.txt")
    assert repo.read_bytes("a/b.txt") == b"hi" * 1000
    assert repo.list_keys() == ["a/b.txt"]


def test_only_the_proven_implementations_get_their_capabilities() -> None:
    assert not capabilities_of(fsspec.filesystem("memory")).staged
    assert capabilities_of(fsspec.filesystem("file")).local
    assert capabilities_of(_Wrapper(skip_instance_cache=True)).staged  # same protocol, other open()
    assert capabilities_of(DirFileSystem(path="/x", fs=fsspec.filesystem("memory"))).staged


@pytest.mark.parametrize(
    ("transform", "message"),
    [
        (_Dropping, "missing after a write that raised no error|holds 0 bytes after a write of 3000"),
        (_Truncating, "holds 2999 bytes after a write of 3000"),
        (_Flipping, "reads back other bytes than were written"),
    ],
    ids=["dropped", "truncated", "corrupted"],
)
def test_a_write_the_filesystem_mishandles_is_never_reported_stored(transform: Any, message: str) -> None:
    repo = _wrapped(transform)
    with pytest.raises(NotStored, match=message):
        repo.put_bytes("wal/seg", b"x" * 3000)
    repo.fs.transform = None
    assert not repo.exists("wal/seg")
    assert repo.list_keys() == []


def test_no_clobber_and_nothing_visible_before_commit() -> None:
    repo = _wrapped(None)
    w = repo.writer("obj")
    w.write(b"partial")
    assert not repo.exists("obj")
    assert repo.list_keys() == []  # the staged object has a hidden temporary name
    repo.put_bytes("obj", b"theirs")  # appears meanwhile
    with pytest.raises(AlreadyExists, match="appeared"):
        w.commit()
    assert repo.read_bytes("obj") == b"theirs"
    with pytest.raises(AlreadyExists):
        repo.put_bytes("obj", b"again")
    w = repo.writer("gone")
    w.write(b"never")
    w.abort()
    assert repo.list_keys() == ["obj"]
    assert [p for p in repo.fs.find(repo.root) if p.endswith(".tmp")] == []


class _NoMove(AbstractFileSystem):  # type: ignore[misc]
    """A minimal filesystem as fsspec's docs sketch one: ls, _open, rm; no copy or move."""

    protocol = "nomove"

    def __init__(self, fail_copy_after: int | None = None) -> None:
        super().__init__()
        self.store = MemoryFileSystem(skip_instance_cache=True)  # its objects live in one process-wide dict
        self.root_marker = ""
        self.fail_copy_after = fail_copy_after

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> Any:
        return self.store.ls(path, detail=detail, **kwargs)

    def info(self, path: str, **kwargs: Any) -> Any:
        return self.store.info(path, **kwargs)

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        f = self.store._open(path, mode, **kwargs)
        limit = self.fail_copy_after
        if "w" in mode and limit is not None and not path.rsplit("/", 1)[-1].startswith("."):
            real = f.write
            written = [0]

            def write(data: bytes) -> int:
                written[0] += len(data)
                if written[0] > limit:
                    raise ConnectionResetError("connection reset during the copy")
                return int(real(data))

            f.write = write
        return f

    def rm_file(self, path: str) -> None:
        self.store.rm_file(path)


def test_a_filesystem_that_cannot_move_gets_a_checked_copy() -> None:
    repo = Repository(fs=_NoMove(), root=_memory_root(), retry_policy=ONCE)
    data = bytes(range(256)) * 40_000  # 10 MiB: more than a part, several copy chunks
    assert repo.put_bytes("big", data).size == len(data)
    assert repo.read_bytes("big") == data
    assert repo.list_keys() == ["big"]


def test_a_copy_that_fails_half_way_leaves_nothing_under_the_key() -> None:
    """The WAL archive counts an object under its final name as archived: a half copy must never stay there."""
    repo = Repository(fs=_NoMove(fail_copy_after=3 << 20), root=_memory_root(), retry_policy=ONCE)
    with pytest.raises(StorageError, match="connection reset during the copy"):
        repo.put_bytes("wal/seg", b"z" * (6 << 20))
    assert not repo.exists("wal/seg")
    assert repo.list_keys() == []


def test_a_filesystem_that_cannot_confirm_a_write_is_refused_up_front() -> None:
    class WriteOnly(AbstractFileSystem):  # type: ignore[misc]
        protocol = "writeonly"

        def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
            raise NotImplementedError

    class Nothing(AbstractFileSystem):  # type: ignore[misc]
        protocol = "nothing"

    with pytest.raises(ConfigurationError, match=r"neither info\(\) nor ls\(\).*could not confirm"):
        Repository(fs=WriteOnly(), root="/r")
    with pytest.raises(ConfigurationError, match=r"neither open\(\) nor _open\(\)"):
        Repository(fs=Nothing(), root="/r")
    with pytest.raises(ConfigurationError, match="takes an fsspec filesystem"):
        Repository(fs=object(), root="/r")  # type: ignore[arg-type]


def test_clean_finds_what_a_killed_staged_write_left() -> None:
    repo = _wrapped(None)
    repo.put_bytes("kept", b"k")
    left = f"{repo.root}/wal/.seg.0badc0de.tmp"  # what a writer killed before publishing leaves
    repo.fs.pipe_file(left, b"half")
    assert repo.list_keys() == ["kept"]
    assert repo.stale_temp_files() == []  # too young: it might be a write under way
    assert repo.stale_temp_files(older_than=-1) == ["wal/.seg.0badc0de.tmp"]
    repo.remove_temp_file("wal/.seg.0badc0de.tmp")
    assert repo.stale_temp_files(older_than=-1) == []
    assert repo.read_bytes("kept") == b"k"
