"""The local method's files without a server: which files a base backup takes, how they are spread over bundles,
and a data directory written into bundles on a memory repository and restored from them (full and incremental)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest

from pgrecovery import BackupManifest, ChecksumMismatch, Repository
from pgrecovery._chain import file_layers, load_chain, stored_pieces
from pgrecovery.catalog import writing_backup
from pgrecovery.manifest import FileEntry, PhysicalInfo
from pgrecovery.physical._bundles import DataFile, assign, scan_data_directory, write_bundles
from pgrecovery.physical._delta import Planner
from pgrecovery.physical.restore import restore_files
from pgrecovery.progress import Meter

T0 = datetime(2026, 11, 24, 10, 15, tzinfo=UTC)


def datadir(root: Path) -> Path:
    files = {
        "PG_VERSION": b"17\n",
        "global/pg_control": b"c" * 8192,
        "base/5/16384": b"t" * 20000,
        "base/5/16385": b"i" * 100,
        "pg_wal/000000010000000000000001": b"w" * 100,  # contents left out
        "pg_wal/archive_status/000000010000000000000001.done": b"",
        "pg_stat_tmp/x": b"s",
        "postmaster.pid": b"1",
        "base/5/pgsql_tmp123": b"tmp",
        "pgrecovery_spool/seg": b"spool",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "pg_tblspc").mkdir()
    return root


@pytest.fixture
def repo() -> Repository:
    return Repository(f"memory://bundles-{uuid.uuid4().hex}")


def test_the_scan_leaves_out_what_a_restore_rebuilds(tmp_path: Path) -> None:
    dirs, files = scan_data_directory(str(datadir(tmp_path)), {})
    assert sorted(f.rel for f in files) == ["PG_VERSION", "base/5/16384", "base/5/16385", "global/pg_control"]
    assert {"pg_tblspc", "pg_wal", "pg_wal/archive_status", "pg_stat_tmp", "base/5"} <= set(dirs)
    assert "pgrecovery_spool" not in dirs


def test_files_are_spread_biggest_first_onto_the_lightest_bundle() -> None:
    files = [DataFile(f"f{size}", "/x", size) for size in (1, 50, 100, 30, 20)]
    bundles = assign(files, 2)
    assert [[f.size for f in b] for b in bundles] == [[100, 20], [50, 30, 1]]  # each file also costs a header
    assert assign([], 4) == [[]]
    assert assign(files[:1], 4) == [[files[0]]]


def base_manifest(backup_id: str, when: datetime, files: list[FileEntry], **physical: Any) -> BackupManifest:
    """A base backup's manifest with a made-up WAL range; ``physical`` gives the rest of its `PhysicalInfo`."""
    return BackupManifest(
        id=backup_id,
        kind="base",
        started_at=when,
        finished_at=when + timedelta(seconds=1),
        format="tar",
        compression="zstd",
        files=files,
        physical=PhysicalInfo(
            label="t",
            start_lsn="0/2000028",
            stop_lsn="0/2000100",
            timeline=1,
            start_wal="000000010000000000000002",
            stop_wal="000000010000000000000002",
            system_identifier="7",
            data_checksums=True,
            wal_segment_size=16 << 20,
            **physical,
        ),
    )


def take(repo: Repository, pgdata: Path, when: datetime, parent: BackupManifest | None = None) -> BackupManifest:
    known = {m.path: m for m in parent.physical.members} if parent and parent.physical else {}
    needs = sorted({parent.id} | {m.source for m in known.values()}) if parent else []
    planner = Planner(parent=known, method="file", since=0, block_size=8192, segment_blocks=131072) if parent else None
    with writing_backup(repo, "base", when, needs=needs) as backup:
        dirs, found = scan_data_directory(str(pgdata), {})
        files, members = write_bundles(
            repo, backup.id, assign(found, 2), Meter("backup", None), planner, codec="zstd", level=1, threads=1
        )
        parent_id = parent.id if parent else None
        return backup.finish(
            base_manifest(backup.id, when, files, method="local", parent=parent_id, directories=dirs, members=members)
        )


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_full_backup_restores_every_file_it_took(repo: Repository, tmp_path: Path) -> None:
    pgdata = datadir(tmp_path / "data")
    full = take(repo, pgdata, T0)
    assert full.physical is not None
    assert {m.source for m in full.physical.members} == {full.id}
    assert restore_files(repo, full, tmp_path / "restored") == 4
    restored = tree(tmp_path / "restored")
    assert restored == {k: v for k, v in tree(pgdata).items() if k in {m.path for m in full.physical.members}}
    assert (tmp_path / "restored" / "pg_wal" / "archive_status").is_dir()


def test_an_incremental_backup_refers_to_unchanged_files_and_reads_only_the_bundles_it_needs(
    repo: Repository, tmp_path: Path
) -> None:
    pgdata = datadir(tmp_path / "data")
    full = take(repo, pgdata, T0)
    (pgdata / "base/5/16385").write_bytes(b"j" * 100)  # same size, other content
    inc = take(repo, pgdata, T0 + timedelta(hours=1), parent=full)
    assert inc.physical is not None
    assert full.physical is not None
    sources = {m.path: m.source for m in inc.physical.members}
    assert sources == {
        "PG_VERSION": full.id,
        "base/5/16384": full.id,
        "base/5/16385": inc.id,
        "global/pg_control": full.id,
    }
    chain = load_chain(repo, inc)
    assert list(chain) == [full.id, inc.id]
    read = stored_pieces(file_layers(chain, inc).values())
    assert read == {(b.source, b.bundle) for b in inc.physical.members}
    assert restore_files(repo, inc, tmp_path / "restored") == 4
    assert tree(tmp_path / "restored")["base/5/16385"] == b"j" * 100
    # a delta restore that finds everything but one file in place reads only that file's bundle
    layers = {p: s for p, s in file_layers(chain, inc).items() if p == "base/5/16385"}
    assert stored_pieces(layers.values()) == {(inc.id, sources_bundle(inc, "base/5/16385"))}


def sources_bundle(m: BackupManifest, path: str) -> str:
    assert m.physical is not None
    return next(x.bundle for x in m.physical.members if x.path == path)


def test_a_member_that_differs_from_the_manifest_is_refused(repo: Repository, tmp_path: Path) -> None:
    pgdata = datadir(tmp_path / "data")
    full = take(repo, pgdata, T0)
    assert full.physical is not None
    lied = [attrs.evolve(m, sha256="0" * 64) if m.path == "PG_VERSION" else m for m in full.physical.members]
    damaged = attrs.evolve(full, physical=attrs.evolve(full.physical, members=lied))
    with pytest.raises(ChecksumMismatch, match=r"PG_VERSION .* differs from the manifest"):
        restore_files(repo, damaged, tmp_path / "restored")
