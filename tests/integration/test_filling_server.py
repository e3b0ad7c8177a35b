"""The segment a real server is writing, followed and done ahead (`pgrecovery.wal._filling`) on the oldest and
newest majors: most of it is hashed and compressed before it is complete, and the push's result from that work is
exactly the file's digest and content."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard
from pgtesting import Major, recorded_finish

from pgrecovery import LocalCluster
from pgrecovery.codec import compressor
from pgrecovery.wal import _filling
from pgrecovery.wal._layout import read_and_pack

INSERT = "insert into t select i, md5(i::text) || repeat(' x', i %% 50) from generate_series(%s::int, %s::int) i"
pytestmark = pytest.mark.parametrize("major", [15, 18], indirect=True, ids=lambda n: f"pg{n}")


@pytest.fixture
def server(major: Major) -> Iterator[LocalCluster]:
    settings = {"archive_mode": "on", "archive_command": "true", "fsync": False, "wal_level": "replica"}
    with major.active():
        cluster = LocalCluster.temporary(settings=settings)
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.destroy()


def wait_for(condition: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.02)
    assert condition(), "timed out"  # type: ignore[operator]


def test_the_segment_being_written_is_done_ahead_and_its_push_is_exact(server: LocalCluster) -> None:
    wal = Path(server.data_dir) / "pg_wal"
    server.execute("create table t (i int, note text)")
    server.execute("select pg_switch_wal()")
    server.execute("insert into t values (0, 'start')")  # the next segment has begun
    filler = _filling.SegmentFiller(str(wal), 16 << 20, lambda: compressor("zstd", None, threads=1)).start()
    try:
        wait_for(lambda: filler._current is not None)
        current = filler._current
        assert current is not None
        n, deadline = 0, time.monotonic() + 120
        while current.done < 4 << 20:  # a trickle of small transactions, as on a quiet primary
            assert time.monotonic() < deadline, f"only {current.done} bytes done ahead"
            server.execute(INSERT, (n, n + 2000))
            n += 2001
            time.sleep(0.01)
        name = current.name
        server.execute("select pg_switch_wal()")
        wait_for(lambda: os.path.exists(wal / "archive_status" / f"{name}.done"))
        filling = filler.take(name)
    finally:
        filler.stop()
    assert filling is not None
    assert filling.done >= 4 << 20
    used, finish = recorded_finish(filling)

    _st, _size, digest, packed = read_and_pack(str(wal / name), "zstd", None, finish)
    raw = (wal / name).read_bytes()
    assert used == [True]
    assert digest == hashlib.sha256(raw).hexdigest()
    assert packed is not None
    assert zstandard.ZstdDecompressor().decompressobj().decompress(packed) == raw
