"""The pieces `Storage` is built from, one at a time and server-free (memory:// and local disk): the retry object,
the capability table and URL handling, the writers (handed a `Target`, never the repository) and the readers."""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fsspec
import pytest
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from pgrecovery import AlreadyExists, ConfigurationError, NotStored, StorageError
from pgrecovery._fsutil import is_temp_name
from pgrecovery._objects import HashingWriter
from pgrecovery.crypto import EncryptingWriter, EncryptionKey, decrypt_bytes
from pgrecovery.errors import EncryptionError
from pgrecovery.storage import Capabilities, RetryPolicy, capabilities_of
from pgrecovery.storage._drivers import open_fs, unwrap_dir
from pgrecovery.storage._local import LocalWriter
from pgrecovery.storage._readers import RetryingReader, digest_stream, modified_of
from pgrecovery.storage._retry import Retry, reason
from pgrecovery.storage._staged import StagedWriter
from pgrecovery.storage._writers import BufferWriter, Target, UploadWriter

FAST = RetryPolicy(attempts=3, base_delay=0)


def _retry(policy: RetryPolicy = FAST, secrets: tuple[str, ...] = ()) -> Retry:
    return Retry(policy, "memory://unit", secrets)


def _flaky(results: list[Any]) -> Any:
    """An operation that raises or returns each of ``results`` in turn."""

    def op() -> Any:
        value = results.pop(0)
        if isinstance(value, BaseException):
            raise value
        return value

    return op


def _fail_inside(writer: HashingWriter) -> None:
    """Write into ``writer`` in a ``with`` block that then fails."""
    with writer as w:
        w.write(b"partial")
        raise RuntimeError("stop")


# -- the retry object -------------------------------------------------------------------------------------------


def test_transient_errors_are_retried_with_a_log_line_naming_the_object(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pgrecovery")
    op = _flaky([ConnectionResetError("reset"), TimeoutError("slow"), "done"])
    assert _retry()("read", "wal/000000010000000000000001", op) == "done"
    lines = [r.getMessage() for r in caplog.records if r.name == "pgrecovery.storage"]
    assert len(lines) == 2
    assert all("read wal/000000010000000000000001 in memory://unit" in line for line in lines)
    assert "(attempt 2 of 3)" in lines[0]
    assert "(attempt 3 of 3)" in lines[1]


def test_attempts_are_bounded_and_the_failure_names_key_place_and_count() -> None:
    op = _flaky([ConnectionResetError("reset")] * 3)
    with pytest.raises(StorageError, match=r"cannot list 'k' in memory://unit \(after 3 attempts\): reset"):
        _retry()("list", "k", op)


def test_permanent_errors_are_not_retried() -> None:
    calls = []

    def op() -> None:
        calls.append(1)
        raise PermissionError(errno.EACCES, "no", "/r/k")

    with pytest.raises(StorageError, match="permission denied"):
        _retry()("read", "k", op)
    assert calls == [1]


def test_a_missing_object_passes_through_unless_a_write_is_confirmed() -> None:
    with pytest.raises(FileNotFoundError):
        _retry()("read", "k", _flaky([FileNotFoundError("k")]))


def test_a_lost_answer_is_confirmed_before_a_conflict_is_called() -> None:
    # the first PUT landed but its answer was lost; the retry meets "exists": ask whether it was ours
    landed = _flaky([ConnectionResetError("lost"), FileExistsError("k")])
    assert _retry()("store", "k", landed, confirm=lambda: True) is None
    other = _flaky([ConnectionResetError("lost"), FileExistsError("k")])
    with pytest.raises(AlreadyExists, match=r"refusing to overwrite 'k': it appeared in memory://unit during"):
        _retry()("store", "k", other, confirm=lambda: False)
    # without a failure before, "exists" is a conflict at once: confirm is not even asked
    asked = []
    with pytest.raises(AlreadyExists):
        _retry()("store", "k", _flaky([FileExistsError("k")]), confirm=lambda: asked.append(1) or True)
    assert asked == []


def test_failures_never_show_the_repository_secrets() -> None:
    retry = _retry(RetryPolicy(attempts=1), secrets=("s3cr3t-value",))
    error = retry.failure("read", "k", OSError("denied for key s3cr3t-value"))
    assert "s3cr3t-value" not in str(error)
    assert retry.failure("read", "k", error) is error  # a StorageError is kept as it is


def test_reason_says_plainly_what_went_wrong() -> None:
    assert reason(PermissionError(errno.EACCES, "Permission denied", "/r/k")) == "permission denied (/r/k)"
    assert reason(OSError(errno.ENOSPC, "No space")) == "no space left on device"
    assert reason(ValueError("bad\n  thing")) == "ValueError: bad thing"


@pytest.mark.parametrize("attempt", [1, 2, 3, 10])
def test_the_pause_is_capped_exponential_with_half_of_it_jitter(attempt: int) -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=1.5)
    step = min(1.5, 0.5 * 2 ** (attempt - 1))
    assert all(step / 2 <= policy.delay(attempt) <= step for _ in range(50))


# -- drivers ----------------------------------------------------------------------------------------------------


def test_the_capability_table() -> None:
    assert capabilities_of(fsspec.filesystem("file")) == Capabilities(local=True)
    assert capabilities_of(fsspec.filesystem("memory")) == Capabilities()

    class Changed(MemoryFileSystem):  # type: ignore[misc]
        def info(self, path: str, **kwargs: Any) -> Any:
            return super().info(path, **kwargs)

    assert capabilities_of(Changed()).staged  # not the implementation that was proven


def test_a_dir_filesystem_is_unwrapped_to_the_one_it_prefixes(tmp_path: Path) -> None:
    local = fsspec.filesystem("file")
    fs, root = unwrap_dir(DirFileSystem(path=str(tmp_path), fs=local), "repo")
    assert fs is local
    assert root == f"{tmp_path}/repo"


def test_repository_urls_are_checked() -> None:
    with pytest.raises(ConfigurationError, match=r"lacks '://': write s3://"):
        open_fs("s3:bucket/prefix", {})
    with pytest.raises(ConfigurationError, match="unknown storage protocol 'nosuch'"):
        open_fs("nosuch://x", {})
    fs, path = open_fs("memory://unit-urls", {})
    assert isinstance(fs, MemoryFileSystem)
    assert path == "/unit-urls"


# -- writers ----------------------------------------------------------------------------------------------------


def test_the_local_writer_publishes_durably_and_never_clobbers(tmp_path: Path) -> None:
    path = str(tmp_path / "a" / "b" / "obj")
    with LocalWriter("a/b/obj", path, overwrite=False) as w:
        w.write(b"hello")
    assert Path(path).read_bytes() == b"hello"
    with pytest.raises(AlreadyExists, match="it is already in the repository"):
        LocalWriter("a/b/obj", path, overwrite=False)
    racing = LocalWriter("a/b/new", str(tmp_path / "a" / "b" / "new"), overwrite=False)
    racing.write(b"mine")
    (tmp_path / "a" / "b" / "new").write_bytes(b"theirs")  # appears during the write
    with pytest.raises(AlreadyExists, match="it appeared in the repository during the write"):
        racing.commit()
    assert (tmp_path / "a" / "b" / "new").read_bytes() == b"theirs"
    with LocalWriter("a/b/obj", path, overwrite=True) as w:
        w.write(b"again")
    assert Path(path).read_bytes() == b"again"
    assert not [n for n in os.listdir(tmp_path / "a" / "b") if is_temp_name(n)]  # no temporary file left


def test_the_local_writer_leaves_nothing_when_aborted(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="stop"):
        _fail_inside(LocalWriter("obj", str(tmp_path / "obj"), overwrite=False))
    assert os.listdir(tmp_path) == []


def _target(fs: Any, path: str, *, part_size: int = 1 << 20, caps: Capabilities | None = None) -> Target:
    return Target(
        key=path.rsplit("/", 1)[-1],
        path=path,
        fs=fs,
        overwrite=False,
        retry=_retry(),
        part_size=part_size,
        capabilities=caps or Capabilities(object_store=True),
        exists=lambda: bool(fs.exists(path)),
        stored_digest=lambda: digest_stream(fs.open(path, "rb")),
    )


def test_the_buffer_writer_stores_in_one_call() -> None:
    fs, path = fsspec.filesystem("memory"), f"/parts-{uuid.uuid4().hex}/obj"
    with BufferWriter("obj", fs, path, overwrite=False) as w:
        w.write(b"one ")
        w.write(b"call")
    assert fs.cat_file(path) == b"one call"
    again = BufferWriter("obj", fs, path, overwrite=False)
    again.write(b"x")
    with pytest.raises(AlreadyExists, match="appeared in memory during the write"):
        again.commit()


@pytest.mark.parametrize("size", [10, 100_000])
def test_the_upload_writer_puts_small_objects_whole_and_streams_large_ones(size: int) -> None:
    fs, path = fsspec.filesystem("memory"), f"/parts-{uuid.uuid4().hex}/obj"
    data = os.urandom(size)
    w = UploadWriter(_target(fs, path, part_size=4096))
    for start in range(0, size, 1000):
        w.write(data[start : start + 1000])
    stored = w.commit()
    assert fs.cat_file(path) == data
    assert (stored.size, stored.sha256) == (size, hashlib.sha256(data).hexdigest())


def test_the_staged_writer_confirms_what_it_publishes() -> None:
    fs, path = fsspec.filesystem("memory"), f"/parts-{uuid.uuid4().hex}/obj"
    with StagedWriter(_target(fs, path, caps=Capabilities(staged=True))) as w:
        w.write(b"staged")
    assert fs.cat_file(path) == b"staged"
    assert [p for p in fs.find(path.rsplit("/", 1)[0]) if is_temp_name(p.rsplit("/", 1)[-1])] == []

    class Lossy(MemoryFileSystem):  # type: ignore[misc]
        def info(self, path: str, **kwargs: Any) -> Any:
            return {**super().info(path, **kwargs), "size": 1}

    lossy = Lossy(skip_instance_cache=True)
    w = StagedWriter(_target(lossy, f"/parts-{uuid.uuid4().hex}/obj", caps=Capabilities(staged=True)))
    w.write(b"more than one byte")
    with pytest.raises(NotStored, match="holds 1 bytes after a write of 18"):
        w.commit()


# -- readers ----------------------------------------------------------------------------------------------------


def test_the_retrying_reader_repeats_a_failed_read() -> None:
    class Flaky(io.BytesIO):
        failures = 1

        def read(self, size: int | None = -1) -> bytes:
            if self.failures:
                self.failures -= 1
                raise ConnectionResetError("dropped")
            return super().read(size)

    with io.BufferedReader(RetryingReader(Flaky(b"abc" * 1000), _retry(), "k")) as r:
        assert r.read() == b"abc" * 1000


def test_digest_and_modification_time() -> None:
    assert digest_stream(io.BytesIO(b"x" * 10)) == (10, hashlib.sha256(b"x" * 10).hexdigest())
    when = datetime(2026, 3, 15, 14, 30, tzinfo=UTC)
    assert modified_of({"LastModified": when}, "k", "s3://b") == when
    assert modified_of({"updated": "2026-03-15T14:30:00Z"}, "k", "gs://b") == when
    assert modified_of({"mtime": when.timestamp()}, "k", "memory://") == when
    with pytest.raises(StorageError, match="does not say when 'k' was stored"):
        modified_of({}, "k", "memory://")


# -- encryption on top of a writer ------------------------------------------------------------------------------


def test_the_encrypting_writer_is_a_hashing_writer_that_commits_and_aborts_like_one() -> None:
    key = EncryptionKey.generate()
    fs, path = fsspec.filesystem("memory"), f"/parts-{uuid.uuid4().hex}/obj"
    with EncryptingWriter(BufferWriter("obj", fs, path, overwrite=False), key, record_size=4096) as w:
        assert isinstance(w, HashingWriter)
        w.write(b"secret " * 1000)
    assert decrypt_bytes(fs.cat_file(path), key) == b"secret " * 1000
    with pytest.raises(EncryptionError, match="after it was committed or aborted"):
        w.write(b"more")
    aborted = f"/parts-{uuid.uuid4().hex}/obj"
    with pytest.raises(RuntimeError, match="stop"):
        _fail_inside(EncryptingWriter(BufferWriter("obj", fs, aborted, overwrite=False), key))
    assert not fs.exists(aborted)
