"""The same stories through every storage backend (see storage_backends.BACKENDS): local disk, memory, fsspec's
DirFileSystem, SFTP (OpenSSH), WebDAV (wsgidav), a user-defined filesystem, S3 (moto), Azure Blob (Azurite) and GCS
(fake-gcs-server).

Logical backup and restore, listing and deletion, verification (a corrupted object is caught), a base backup taken
while a real server archives its WAL (archive_command through the CLI, as the postgres user, with the storage
configured only through FSSPEC_* variables in the server's environment), point-in-time recovery to the moment
before a DELETE (restore_command likewise), aborted writes, conditional writes, multipart uploads and listings
that span several pages.
"""

from __future__ import annotations

import gc
import hashlib
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from storage_backends import PART_SIZE, Backend

from pgrecovery import (
    AlreadyExists,
    BaseBackup,
    LocalCluster,
    LogicalBackup,
    LogicalRestore,
    RecoveryPlan,
    RecoveryTarget,
    Repository,
    Verifier,
    copy_repository,
)
from pgrecovery import _walnames as wn
from pgrecovery.catalog import claim_backup_id, data_key, leftovers
from pgrecovery.manifest import BackupManifest
from pgrecovery.wal.archiver import WalArchiver, archive_command, object_key

ROWS = "select count(*), coalesce(sum(i), 0) from t"

# -- logical backups, listing, deletion, verification ------------------------------------------------------------


@pytest.fixture(scope="module")
def shop(pg: LocalCluster) -> Iterator[str]:
    """A small database on the session's server (shared by every backend)."""
    name = f"shop_{uuid.uuid4().hex[:8]}"
    conninfo = pg.create_database(name)
    pg.execute(
        "create table t (i int primary key, name text not null);"
        "insert into t select g, 'item ' || g from generate_series(1, 5000) g;"
        "create table notes (id serial primary key, body text); insert into notes (body) values ('a'), ('b');",
        dbname=name,
    )
    yield conninfo
    pg.execute(f'drop database if exists "{name}" with (force)')


def _rows(pg: LocalCluster, dbname: str) -> tuple[Any, ...]:
    return pg.query(ROWS, dbname=dbname)[0]


def test_logical_backup_restore_list_and_delete(backend: Backend, pg: LocalCluster, shop: str) -> None:
    repo = backend.repo()
    m = LogicalBackup(dbname=shop).run(repo)
    assert [b.id for b in repo.backups()] == [m.id]
    assert repo.get("latest").id == m.id

    target = f"copy_{uuid.uuid4().hex[:8]}"
    try:
        LogicalRestore(repo, m.id).run(pg.conninfo(target), create=True)
        assert _rows(pg, target) == (5000, sum(range(1, 5001)))
        assert pg.query("select body from notes order by id", dbname=target) == [("a",), ("b",)]
    finally:
        pg.execute(f'drop database if exists "{target}" with (force)')

    deleted = repo.delete_backup(m.id)
    assert [d.id for d in deleted] == [m.id]
    assert repo.backups() == []
    assert repo.list_keys(f"backups/{m.id}") == []


def test_verifier_passes_then_catches_a_corrupted_object(backend: Backend, shop: str) -> None:
    repo = backend.repo()
    m = LogicalBackup(dbname=shop).run(repo)
    assert Verifier(repo).verify(m.id).ok

    key = f"backups/{m.id}/{m.files[0].path}"
    damaged = bytearray(repo.read_bytes(key))
    damaged[len(damaged) // 2] ^= 0x55
    repo.put_bytes(key, bytes(damaged), overwrite=True)
    report = Verifier(repo).verify(m.id)
    assert not report.ok
    (check,) = [c for c in report.checks if c.name == "checksums"]
    assert check.status == "fail"
    assert key in check.detail
    assert "sha256 differs" in check.detail


def test_copy_to_the_backend_restores_and_reruns_clean(
    backend: Backend, pg: LocalCluster, shop: str, tmp_path: Path
) -> None:
    """The 3-2-1 copy: a local repository copied to this backend, interrupted copies resumed, the copy restores."""
    primary = Repository(f"file://{tmp_path}/primary")
    m = LogicalBackup(dbname=shop).run(primary)
    copy = backend.repo()
    result = copy_repository(primary, copy)
    assert result.ok
    assert result.backups_copied == (m.id,)
    assert copy_repository(primary, copy).bytes_copied == 0  # a rerun (from cron) finds nothing to do
    assert [b.id for b in copy.backups()] == [m.id]
    assert Verifier(copy).verify(m.id).ok
    target = f"copy_{uuid.uuid4().hex[:8]}"
    try:
        LogicalRestore(copy, m.id).run(pg.conninfo(target), create=True)
        assert _rows(pg, target) == (5000, sum(range(1, 5001)))
    finally:
        pg.execute(f'drop database if exists "{target}" with (force)')


def test_encrypted_backup_through_the_backend(backend: Backend, pg: LocalCluster, shop: str) -> None:
    """Client-side encryption over each store: nothing readable there, the restore equal, a changed byte refused."""
    from pgrecovery.crypto import MAGIC, EncryptionKey
    from pgrecovery.errors import EncryptionError

    key = EncryptionKey.generate()
    prefix = f"enc-{uuid.uuid4().hex[:8]}"
    repo = backend.repo(prefix, encryption=key)
    m = LogicalBackup(dbname=shop, compression="none").run(repo)
    assert m.encryption is not None
    assert m.encryption["key_id"] == key.key_id
    plain = backend.repo(prefix)  # the same objects without the key
    for k in plain.list_keys(f"backups/{m.id}"):
        assert plain._stored_digest(k)[0] > 0
        with plain._open_raw(k) as f:
            head = f.read(4)
        assert head == MAGIC, k
    with pytest.raises(EncryptionError, match=key.key_id):
        plain.get(m.id)
    target = f"enc_{uuid.uuid4().hex[:8]}"
    try:
        LogicalRestore(repo, m.id).run(pg.conninfo(target), create=True)
        assert _rows(pg, target) == (5000, sum(range(1, 5001)))
    finally:
        pg.execute(f'drop database if exists "{target}" with (force)')


def test_no_backup_is_listed_before_its_manifest(backend: Backend) -> None:
    repo = backend.repo()
    backup_id = claim_backup_id(repo, "logical")
    repo.put_bytes(data_key(backup_id, "dump.pgdump.zst"), b"half a dump")
    assert repo.backups() == []
    assert [x.id for x in leftovers(repo)] == [backup_id]


def test_a_corrupted_wal_object_is_named(backend: Backend, tmp_path: Path) -> None:
    repo = backend.repo()
    archiver = WalArchiver(repo, spool_dir=tmp_path / "spool")
    wal = tmp_path / "pg_wal"
    wal.mkdir()
    names = [wn.segment_name(1, n) for n in (1, 2, 3)]
    for n in names:
        (wal / n).write_bytes(os.urandom(64 << 10))
        archiver.push(wal / n)
    victim = archiver.find(names[1])
    assert victim is not None
    data = bytearray(repo.read_bytes(victim.key))
    data[-20] ^= 0xFF
    repo.put_bytes(victim.key, bytes(data), overwrite=True)
    report = archiver.verify(check_digests=True)
    assert report.missing == ()
    assert report.corrupt == (names[1],)


# -- writes: nothing partial is ever visible, nothing is overwritten ---------------------------------------------


@pytest.mark.parametrize("size", [100 << 10, 12 << 20], ids=["small", "multipart"])
def test_an_aborted_write_leaves_nothing(backend: Backend, size: int) -> None:
    repo = backend.repo()
    data = os.urandom(size)

    def feed(w: Any) -> None:
        for start in range(0, size, 1 << 20):
            w.write(data[start : start + (1 << 20)])

    def producer_dies() -> None:
        with repo.writer("a/raised") as w:
            feed(w)
            raise RuntimeError("pg_dump died half way")

    with pytest.raises(RuntimeError):
        producer_dies()
    w = repo.writer("a/aborted")
    feed(w)
    w.abort()
    w = repo.writer("a/dropped")  # neither committed nor aborted: garbage collection must not complete it
    feed(w)
    del w
    gc.collect()
    for key in ("a/raised", "a/aborted", "a/dropped"):
        assert not repo.exists(key), key
    assert repo.list_keys() == []
    # nothing left behind blocks a later write of the same names (S3 multipart uploads were aborted; Azure's
    # uncommitted blocks do not count as an object)
    for key in ("a/raised", "a/aborted", "a/dropped"):
        obj = repo.put_bytes(key, data)
        assert repo.digest(key) == (size, obj.sha256) == (size, hashlib.sha256(data).hexdigest())


def _race(repo: Repository, backend: Backend, key: str, size: int) -> None:
    """Another writer completes ``key`` after our exists() check passed and before our commit."""
    w = repo.writer(key)
    w.write(os.urandom(size))
    backend.plant(repo, {key: b"the other writer's"})
    with pytest.raises(AlreadyExists, match="appeared in"):
        w.commit()
    assert repo.read_bytes(key) == b"the other writer's"


def test_a_write_never_replaces_an_object_that_appeared_meanwhile(backend: Backend) -> None:
    repo = backend.repo()
    repo.put_bytes("exists", b"one")
    with pytest.raises(AlreadyExists, match="already in the repository"):
        repo.put_bytes("exists", b"two")
    _race(repo, backend, "race/small", 100)


def test_a_large_write_never_replaces_an_object_that_appeared_meanwhile(backend: Backend) -> None:
    if backend.name == "gcs":
        pytest.xfail(
            "fake-gcs-server ignores ifGenerationMatch=0 on resumable uploads (GCS itself enforces it when the "
            "upload is finalised); gcsfs sends it, see docs/repository.md"
        )
    _race(backend.repo(), backend, "race/large", 12 << 20)


def test_large_objects_go_in_parts(object_store: Backend) -> None:
    repo = object_store.repo()
    data = os.urandom(3 * PART_SIZE + 12345)
    with repo.writer("big") as w:
        for start in range(0, len(data), 1 << 20):
            w.write(data[start : start + (1 << 20)])
    assert repo.digest("big") == (len(data), hashlib.sha256(data).hexdigest())
    assert _parts(object_store, repo, "big") in (None, 4)


def _parts(backend: Backend, repo: Repository, key: str) -> int | None:
    """How many parts (S3) or blocks (Azure) an object was uploaded in; None where the store does not tell."""
    if backend.name == "s3":
        etag = str(repo.fs.info(repo.path(key))["ETag"]).strip('"')
        return int(etag.rsplit("-", 1)[1]) if "-" in etag else 1
    if backend.name == "azure":
        from azure.storage.blob import BlobClient

        container, blob = repo.path(key).split("/", 1)
        client = BlobClient.from_connection_string(backend.options["connection_string"], container, blob)
        committed, _ = client.get_block_list("committed")
        return len(committed)
    return None  # GCS: a resumable upload in 256 KiB-aligned chunks, finalised once; no part count to read


# -- listings ------------------------------------------------------------------------------------------------------

MANY = 2500


def test_listings_return_thousands_of_objects(backend: Backend) -> None:
    """S3 pages at 1,000 keys, fake-gcs-server at 1,000 (gcsfs asks for that), Azurite at 5,000."""
    repo = backend.repo()
    names = [wn.segment_name(1, n) for n in range(1, MANY + 1)]
    keys = [object_key(n, hashlib.sha256(n.encode()).hexdigest(), "zstd") for n in names]
    backend.plant(repo, dict.fromkeys(keys, b"w"))
    assert repo.list_keys() == sorted(keys)
    assert repo.children("wal/00000001") == sorted(k.rsplit("/", 1)[1] for k in keys)
    archiver = WalArchiver(repo)
    assert archiver.list_archived() == {1: names}
    assert archiver.verify().count == MANY


# -- physical: base backup, WAL through a real server, point-in-time recovery ------------------------------------


@dataclass
class Story:
    backend: Backend
    url: str
    repo: Repository
    cluster: LocalCluster
    backup: BackupManifest
    before_delete: datetime
    rows_before_delete: tuple[Any, ...]


def _wait_archived(cluster: LocalCluster, timeout: float = 120) -> None:
    (wal,) = cluster.query("select pg_walfile_name(pg_switch_wal())")[0]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last, failed = cluster.query("select last_archived_wal, last_failed_wal from pg_stat_archiver")[0]
        if last is not None and last >= wal:
            return
        time.sleep(0.1)
    raise AssertionError(f"{wal} was not archived in time (last failed: {failed}){cluster.log_tail()}")


@pytest.fixture(scope="module")
def story(backend: Backend) -> Iterator[Story]:
    """A server archiving into the backend (FSSPEC_* in its environment only), a base backup, then rows, a moment,
    and a DELETE."""
    if backend.unreachable:
        pytest.skip(backend.unreachable)
    prefix = f"pitr-{uuid.uuid4().hex[:8]}"
    url = backend.url(prefix)
    backend.prepare(prefix)
    command = archive_command(url)
    for secret in backend.secrets:  # credentials reach the command through the environment only
        assert secret not in command
    cluster = LocalCluster.temporary(
        settings={"wal_level": "replica", "archive_mode": "on", "archive_command": command, "fsync": "off"}
    )
    try:
        cluster.start(env=backend.env)
        cluster.execute("create table t (i int primary key, pad text); create table blob (b bytea)")
        cluster.execute("insert into t select g, repeat('x', 50) from generate_series(1, 1000) g")
        with cluster.connect() as conn:  # incompressible, so that a bundle needs several upload parts
            for _ in range(12):
                conn.execute("insert into blob values (%s)", (os.urandom(1 << 20),))
        repo = backend.repo(prefix)
        backup = BaseBackup(dbname=cluster.conninfo(), archive_timeout=120).run(repo)
        cluster.execute("insert into t select g, 'after the backup' from generate_series(1001, 2000) g")
        time.sleep(0.3)
        before_delete = cluster.query("select clock_timestamp()")[0][0]
        rows = cluster.query(ROWS)[0]
        time.sleep(0.3)
        cluster.execute("delete from t where i % 3 = 0")
        _wait_archived(cluster)
        yield Story(backend, url, repo, cluster, backup, before_delete, rows)
    finally:
        cluster.destroy()


def test_the_server_archived_every_segment_intact(story: Story) -> None:
    archiver = WalArchiver(story.repo)
    report = archiver.verify(check_digests=True)
    assert report.ok, report
    assert report.missing == ()
    assert report.corrupt == ()
    assert report.count >= 3
    assert story.backup.physical is not None
    assert archiver.missing(story.backup.physical.start_wal) == []


def test_base_backup_is_stored_intact_and_in_parts(story: Story) -> None:
    report = Verifier(story.repo).verify(story.backup.id)
    assert report.ok, report.failures
    bundles = [f for f in story.backup.files if f.role.startswith("bundle-")]
    biggest = max(bundles, key=lambda f: f.size)
    assert biggest.size > 2 * PART_SIZE
    parts = _parts(story.backend, story.repo, f"backups/{story.backup.id}/{biggest.path}")
    assert parts is None or parts >= 2


def test_point_in_time_recovery_to_before_the_delete(
    story: Story, server_env: Any, owned_dir: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    server_env()  # the recovering server's restore_command gets the storage settings from its environment
    pgdata = owned_dir("pgrecovery-storage-pitr-") / "data"
    plan = RecoveryPlan(story.repo, RecoveryTarget.time(story.before_delete))
    assert plan.backup.id == story.backup.id
    result = plan.run(pgdata, settings={"archive_mode": "off"})
    cluster = LocalCluster(data_dir=pgdata, port=result.port)
    try:
        assert cluster.query(ROWS)[0] == story.rows_before_delete == (2000, sum(range(1, 2001)))
        assert cluster.query("select count(*) from blob")[0][0] == 12
    finally:
        cluster.stop(mode="immediate")
    assert result.state == "promoted"
    conf = (pgdata / "postgresql.auto.conf").read_text()
    for secret in story.backend.secrets:  # restore_command carries no credentials either
        assert secret not in conf
