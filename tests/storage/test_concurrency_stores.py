"""Concurrent operations on one repository on the object stores: the stories of
tests/integration/test_concurrency.py (on ``file://``), with the same checks, against moto (S3), Azurite (Azure
Blob) and fake-gcs-server (GCS).

What differs there: no rename and no directories. A backup id and a WAL object are claimed by a conditional write
(``If-None-Match: *``, ``ifGenerationMatch=0``), so two writers of one key rely on the store refusing the second;
a backup's "directory" is only a prefix of keys, so an expire writing its marker into a backup another expire has
just deleted brings a key back. The checks are those of ``file://``: only complete backups are listed, every
acknowledged WAL segment is stored once with its digest, verify and wal-verify are clean, restores are exact.

One cluster per store (module scope) archives into a fresh repository per test (archive_command switched by a
reload). The commands run here, and the servers recovery starts, reach the store through the backend's
environment (``FSSPEC_*``), put into this process's for each test.

Not repeated here: the incremental chain's damage tests (they edit files on disk, and no two operations race in
them) and the expire race under CPU load (rmdir's "Directory not empty" is a local-disk race; two expires at once
run here once per store).
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pgtesting import archive_settings
from storage_backends import Backend

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))  # the stories and their checks
from test_concurrency import (
    archive_into,
    archive_rounds,
    archived_segments,
    delete_of_a_parent_during_an_incremental_backup,
    different_segments,
    expire_and_clean_during_a_base_backup,
    expire_during_an_incremental_backup,
    fill,
    ids_claimed_in_the_same_second,
    parent_vanished_during_an_incremental_backup,
    same_segment,
    two_base_backups_at_once,
    two_copies_at_once,
    two_expires_at_once,
    two_logical_backups_at_once,
)

from pgrecovery import LocalCluster, Repository
from pgrecovery.catalog import claim_backup_id, leftovers
from pgrecovery.storage.repository import Storage

ROUNDS = 1  # archiver rounds per store (4 on file://): each round starts six archive_command processes


@pytest.fixture(scope="module")
def cluster(object_store: Backend) -> Iterator[LocalCluster]:
    """A cluster whose archive_command reaches ``object_store`` (through the backend's environment)."""
    pg = LocalCluster.temporary(settings=archive_settings(command="", fsync=False))
    try:
        pg.start(env=object_store.env)
        fill(pg)
        yield pg
    finally:
        pg.destroy()


@pytest.fixture(autouse=True)
def store_env(object_store: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI processes a story starts, and the servers its restores start, inherit this environment."""
    for k, v in object_store.env.items():
        monkeypatch.setenv(k, v)


@pytest.fixture
def repo(cluster: LocalCluster, object_store: Backend) -> Repository:
    """A fresh repository on the store that the cluster archives into from now on."""
    prefix = f"conc-{uuid.uuid4().hex[:10]}"
    archive_into(cluster, object_store.url(prefix))
    return object_store.repo(prefix)


# -- backups ----------------------------------------------------------------------------------------------------


def test_two_logical_backups_at_once_on_object_stores(cluster: LocalCluster, repo: Repository) -> None:
    two_logical_backups_at_once(cluster, repo)


def test_ids_claimed_in_the_same_second_on_object_stores(object_store: Backend) -> None:
    ids_claimed_in_the_same_second(object_store.repo())


def test_two_base_backups_at_once_on_object_stores(cluster: LocalCluster, repo: Repository) -> None:
    two_base_backups_at_once(cluster, repo)


def test_expire_and_clean_during_a_base_backup_on_object_stores(
    cluster: LocalCluster, repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    expire_and_clean_during_a_base_backup(cluster, repo, monkeypatch)


def test_expire_during_an_incremental_backup_on_object_stores(
    cluster: LocalCluster, repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    expire_during_an_incremental_backup(cluster, repo, monkeypatch)


def test_delete_of_a_parent_during_an_incremental_backup_on_object_stores(
    cluster: LocalCluster, repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    delete_of_a_parent_during_an_incremental_backup(cluster, repo, monkeypatch)


def test_parent_vanished_during_an_incremental_backup_on_object_stores(
    cluster: LocalCluster, repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    parent_vanished_during_an_incremental_backup(cluster, repo, monkeypatch)


# -- several copies, several expires -----------------------------------------------------------------------------


def test_two_copies_at_once_on_object_stores(cluster: LocalCluster, repo: Repository, object_store: Backend) -> None:
    two_copies_at_once(cluster, repo, object_store.repo())


def test_two_expires_at_once_on_object_stores(cluster: LocalCluster, repo: Repository) -> None:
    two_expires_at_once(cluster, repo)


def test_a_backup_deleted_while_its_marker_is_read_is_a_leftover_not_a_crash(
    object_store: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What two expires at once met on S3, made certain: `leftovers` (which expire calls) opened a backup's
    started.json, the other expire deleted it before the first read, and the read raised the driver's
    FileNotFoundError, which nothing expects: a traceback, exit 1. On ``file://`` an open file stays readable; on
    an object store the bytes are fetched by the read, and a key gone by then must read as missing."""
    repo = object_store.repo()
    backup_id = claim_backup_id(repo, "logical")
    open_raw = Storage._open_raw

    def open_then_lose(self: Storage, key: str) -> object:
        f = open_raw(self, key)
        self.delete(key)  # the other expire, between the open and the read
        return f

    monkeypatch.setattr(Storage, "_open_raw", open_then_lose)
    [left] = leftovers(repo)
    assert (left.id, left.reason) == (backup_id, "interrupted (no start marker)")


# -- archivers --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def segments(
    cluster: LocalCluster, object_store: Backend, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[str]]:
    """Real segments the cluster archived into the store, copied here (one set per store for both tests)."""
    prefix = f"conc-segments-{uuid.uuid4().hex[:10]}"
    archive_into(cluster, object_store.url(prefix))
    return archived_segments(cluster, object_store.repo(prefix), tmp_path_factory.mktemp("segments") / "segments")


def test_two_archivers_push_the_same_segment_at_once_on_object_stores(
    tmp_path: Path, segments: tuple[Path, list[str]], object_store: Backend
) -> None:
    archive_rounds(tmp_path, segments, same_segment, object_store.repo, rounds=ROUNDS)


def test_two_archivers_push_different_segments_at_once_on_object_stores(
    tmp_path: Path, segments: tuple[Path, list[str]], object_store: Backend
) -> None:
    archive_rounds(tmp_path, segments, different_segments, object_store.repo, rounds=ROUNDS)
