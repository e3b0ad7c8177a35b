"""Block-level incremental backups without a server: relation files made of pages stamped with LSNs, a chain of
incrementals over them (changed pages, extension, truncation, new and dropped files), each link restored exactly."""

from __future__ import annotations

import struct
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest
from test_bundles import T0, base_manifest, tree

from pgrecovery import BackupManifest, ChecksumMismatch, Repository
from pgrecovery._chain import file_layers, load_chain
from pgrecovery.catalog import writing_backup
from pgrecovery.physical._bundles import assign, scan_data_directory, write_bundles
from pgrecovery.physical._delta import Planner
from pgrecovery.physical._pages import decode_ranges, encode_ranges, relation_file
from pgrecovery.physical.restore import restore_files
from pgrecovery.progress import Meter

BLOCK = 8192
REL = "base/5/16384"


def page(lsn: int, fill: int) -> bytes:
    return struct.pack("=II", lsn >> 32, lsn & 0xFFFFFFFF) + bytes([fill]) * (BLOCK - 8)


def write(root: Path, rel: str, data: bytes) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_bytes(data)


def take(repo: Repository, pgdata: Path, n: int, start_lsn: int, parent: BackupManifest | None) -> BackupManifest:
    planner = None
    if parent is not None:
        assert parent.physical is not None
        since = int(parent.physical.start_lsn.split("/")[1], 16)
        known = {m.path: m for m in parent.physical.members}
        planner = Planner(parent=known, method="page-lsn", since=since, block_size=BLOCK, segment_blocks=131072)
    when = T0 + timedelta(hours=n)
    with writing_backup(repo, "base", when, needs=[parent.id] if parent else []) as backup:
        dirs, found = scan_data_directory(str(pgdata), {})
        files, members = write_bundles(
            repo, backup.id, assign(found, 2), Meter("b", None), planner, codec="zstd", level=1, threads=1
        )
        m = base_manifest(backup.id, when, files, method="local", directories=dirs, members=members)
        assert m.physical is not None
        phys = attrs.evolve(
            m.physical,
            start_lsn=f"0/{start_lsn:X}",
            parent=parent.id if parent else None,
            incremental="page-lsn" if parent else None,
        )
        return backup.finish(attrs.evolve(m, physical=phys, schema_version=0))


@pytest.fixture
def repo() -> Repository:
    return Repository(f"memory://blocks-{uuid.uuid4().hex}")


def test_a_chain_of_block_level_incrementals_restores_every_link_exactly(repo: Repository, tmp_path: Path) -> None:
    data = tmp_path / "data"
    write(data, "PG_VERSION", b"17\n")
    write(data, "base/5/PG_VERSION", b"17\n")
    write(data, REL, b"".join(page(0x100 + i, i) for i in range(6)))
    write(data, "base/5/16384_vm", b"v" * BLOCK)
    snapshots, links = [], []
    links.append(take(repo, data, 0, 0x1000, None))
    snapshots.append(tree(data))
    # 1: one page changed, two added (one never stamped), the visibility map changed without its LSN moving
    pages = [page(0x100 + i, i) for i in range(6)]
    pages[2] = page(0x2000, 99)
    write(data, REL, b"".join(pages) + page(0x2100, 7) + bytes(BLOCK))
    write(data, "base/5/16384_vm", b"V" * BLOCK)
    links.append(take(repo, data, 1, 0x3000, links[-1]))
    snapshots.append(tree(data))
    # 2: truncated to three pages, a new relation, then nothing else
    write(data, REL, b"".join(pages[:3]))
    write(data, "base/5/16390", page(0x3500, 1))
    links.append(take(repo, data, 2, 0x4000, links[-1]))
    snapshots.append(tree(data))
    # 3: extended again (an old block number comes back with new content), the new relation dropped
    write(data, REL, b"".join(pages[:3]) + page(0x4100, 42) + bytes(BLOCK))
    (data / "base/5/16390").unlink()
    links.append(take(repo, data, 3, 0x5000, links[-1]))
    snapshots.append(tree(data))

    members = {m.id: {x.path: x for x in m.physical.members} for m in links if m.physical}
    assert members[links[1].id][REL].blocks == "2,6-7"
    assert members[links[1].id]["base/5/16384_vm"].blocks is None  # forks other than main: whole files
    assert members[links[2].id][REL].blocks == ""  # only cut shorter
    assert members[links[3].id][REL].blocks == "3-4"
    assert links[3].schema_version == 2
    assert links[0].schema_version == 1
    assert [len(s) for s in file_layers(load_chain(repo, links[3]), links[3]).values()][-1] == 1  # PG_VERSION
    for i, link in enumerate(links):
        target = tmp_path / f"restored-{i}"
        restore_files(repo, link, target)
        assert tree(target) == snapshots[i], f"link {i}"
    # a delta restore over an older copy rebuilds the block-level files
    restore_files(repo, links[3], tmp_path / "restored-1", delta=True)
    assert tree(tmp_path / "restored-1") == snapshots[3]


def test_a_damaged_middle_link_is_refused_before_anything_is_written(repo: Repository, tmp_path: Path) -> None:
    data = tmp_path / "data"
    write(data, REL, b"".join(page(0x100 + i, i) for i in range(8)))
    full = take(repo, data, 0, 0x1000, None)
    links = [full]
    for n in range(1, 4):
        write(data, REL, b"".join(page(0x2000 * n if i == n else 0x100 + i, i + n) for i in range(8)))
        links.append(take(repo, data, n, 0x2000 * n + 0x100, links[-1]))
    middle = links[2]
    assert middle.physical is not None
    role = next(x.bundle for x in middle.physical.members if x.path == REL and x.source == middle.id)
    bundle = middle.file(role)
    key = f"backups/{middle.id}/{bundle.path}"
    raw = bytearray(repo.read_bytes(key))
    raw[len(raw) // 2] ^= 1
    repo.put_bytes(key, bytes(raw), overwrite=True)
    with pytest.raises(ChecksumMismatch, match=middle.id):
        restore_files(repo, links[3], tmp_path / "target")
    assert not (tmp_path / "target").exists()


def test_block_ranges_and_relation_paths() -> None:
    assert encode_ranges([0, 1, 2, 9, 11, 12]) == "0-2,9,11-12"
    assert decode_ranges("0-2,9,11-12") == [(0, 3), (9, 1), (11, 2)]
    assert encode_ranges([]) == ""
    assert decode_ranges("") == []
    with pytest.raises(ValueError):
        decode_ranges("5,3")
    assert relation_file("base/5/16384.2") == relation_file("base/5/16384.2")
    rf = relation_file("tblspc/16500/PG_17_202406281/5/16384_vm.1")
    assert rf is not None
    assert (rf.tablespace, rf.database, rf.relfilenode, rf.fork, rf.segment) == (
        16500,
        5,
        16384,
        "vm",
        1,
    )
    assert relation_file("global/1262").tablespace == 1664  # type: ignore[union-attr]
    assert relation_file("base/5/t3_16384") is None
    assert relation_file("pg_xact/0000") is None


def test_thirty_links_rebuild_each_file_from_the_newest_version_of_each_block(repo: Repository, tmp_path: Path) -> None:
    data = tmp_path / "data"
    pages = [page(0x100 + i, i) for i in range(40)]
    write(data, REL, b"".join(pages))
    links = [take(repo, data, 0, 0x1000, None)]
    for n in range(1, 31):  # a month of daily incrementals, each changing two pages (one of them every day)
        pages[n] = page(0x1000 * (n + 1), 100 + n)
        pages[0] = page(0x1000 * (n + 1) + 8, n)
        write(data, REL, b"".join(pages))
        links.append(take(repo, data, n, 0x1000 * (n + 1) + 0x800, links[-1]))
    last = links[-1]
    layers = file_layers(load_chain(repo, last), last)[REL]
    assert len(layers) == 31
    assert [x.member.blocks for x in layers[1:3]] == ["0-1", "0,2"]
    restore_files(repo, last, tmp_path / "restored")
    assert (tmp_path / "restored" / REL).read_bytes() == b"".join(pages)


class _Rows:
    def __init__(self, rows: list[tuple[object, ...]]) -> None:
        self.rows = rows

    def fetchone(self) -> tuple[object, ...]:
        return self.rows[0]

    def fetchall(self) -> list[tuple[object, ...]]:
        return list(self.rows)

    def __iter__(self) -> Any:
        return iter(self.rows)


class _SummarizingServer:
    """Answers wal_summaries' queries as a PostgreSQL 17 server with two summaries whose LSNs sort wrongly as text."""

    def execute(self, sql: str, params: tuple[object, ...] = ()) -> _Rows:
        if "summarize_wal" in sql:
            return _Rows([("on",)])
        if "pg_get_wal_summarizer_state" in sql:
            return _Rows([("0/12000028",)])
        if "pg_available_wal_summaries" in sql:  # text order: "0/10058F70" before "0/F000028"
            return _Rows([("0/10058F70", "0/12000028"), ("0/F000028", "0/10058F70")])
        start = params[1]
        return _Rows([(1663, 5, 16384, 7 if start == "0/F000028" else 9, False), (1663, 5, 16384, 20, True)])


def test_wal_summaries_cover_a_range_whatever_order_the_server_lists_them_in() -> None:
    from pgrecovery.physical._delta import Summary, wal_summaries

    got = wal_summaries(_SummarizingServer(), 1, "0/F000028", "0/12000028", wait=1)
    assert isinstance(got, Summary), got
    assert got.blocks == {(1663, 5, 16384): {7, 9}}
    assert got.limits == {(1663, 5, 16384): 20}
