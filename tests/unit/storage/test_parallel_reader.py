"""The parallel range reader object stores get for large objects: bytes in order whatever the read sizes, seeks,
and a range that comes back short (the object changed under the reader) is an error, never silent."""

from __future__ import annotations

import os
import uuid
from typing import Any

import fsspec
import pytest

from pgrecovery.errors import StorageError
from pgrecovery.storage._readers import ParallelReader, read_ranges
from pgrecovery.storage._retry import Retry, RetryPolicy

BLOCK = 1 << 20


def reader(fs: Any, path: str, size: int) -> ParallelReader:
    retry = Retry(RetryPolicy(attempts=2, base_delay=0.001, max_delay=0.001), "memory://test")
    return ParallelReader(fs, path, size, retry, path, block=BLOCK, ahead=3)


def test_reads_come_back_in_order_whatever_their_sizes_and_after_seeks() -> None:
    fs = fsspec.filesystem("memory")
    path = f"/pr-{uuid.uuid4().hex}"
    data = os.urandom(3 * BLOCK + 12345)
    fs.pipe_file(path, data)
    with reader(fs, path, len(data)) as r:
        got = b"".join(iter(lambda: r.read(77_777), b""))
        assert got == data
        assert r.read(10) == b""
        r.seek(BLOCK - 5)
        assert r.read(10) == data[BLOCK - 5 : BLOCK + 5]
        r.seek(-7, 2)
        assert r.read() == data[-7:]
        assert r.tell() == len(data)


def test_a_short_range_is_an_error() -> None:
    fs = fsspec.filesystem("memory")
    path = f"/pr-{uuid.uuid4().hex}"
    fs.pipe_file(path, os.urandom(2 * BLOCK))
    with reader(fs, path, 3 * BLOCK) as r, pytest.raises(StorageError, match="changed while it was read"):
        r.read()


@pytest.mark.parametrize("size_mb", [17, 64, 180, 1000, 50_000])
def test_large_objects_are_read_in_fewer_larger_ranges_with_bounded_memory(size_mb: int) -> None:
    """An eighth of the object per range, from the part size up to 32 MB; 2 to 4 ranges in flight, at most 64 MB."""
    part = 8 << 20
    block, ahead = read_ranges(size_mb << 20, part)
    assert part <= block <= 32 << 20
    assert block == min(32 << 20, max(part, (size_mb << 20) // 8))
    assert 2 <= ahead <= 4
    assert block * ahead <= 64 << 20
