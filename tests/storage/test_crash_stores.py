"""The kill -9 sweeps on the object stores: the same operations, kills and checks as
tests/integration/test_crash_sweep.py (on ``file://``), against moto (S3), Azurite (Azure Blob) and
fake-gcs-server (GCS), whose failure modes differ: an upload killed half-way stays behind unseen, a write is
conditional instead of a rename.

After every kill: only complete backups are listed (each passes `verify`), every WAL segment the archiver was
told is archived is stored with its digest, `clean` removes exactly the leftovers, the rerun succeeds, and
`wal-verify` is clean. `copy` goes from the sweeps' repository into new ones on the same store (the source must
not change at all), `expire` works on store-side copies of a snapshot taken after setup, the restores read the
store. At the end `clean` aborts exactly the uploads the kills left unfinished in the sweeps' repository, and a
restore of the last backup matches the source row for row.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pgtesting import archive_settings
from pgtesting import wait_archived as _wait_archived
from storage_backends import Backend

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))  # the sweep's machinery
from test_crash_sweep import (
    Checker,
    Sweep,
    _archived_segments,
    _backup_chain,
    _backup_sweep,
    _copy_sweep,
    _crash_database,
    _expire_sweep,
    _fingerprint,
    _restore_base_sweep,
    _restore_logical_sweep,
    _wal_fetch_sweep,
    _wal_prefetch_sweep,
    _wal_push_sweep,
    cli,
    run,
)

from pgrecovery import LocalCluster, Repository

# kill points per operation and store: the fast profile, 22 per store, sized to keep `nox -s tests` within the
# CI's 30 minutes (each point on a store costs several seconds of requests); PGRECOVERY_SOAK multiplies them, as on
# file://, where the same operations get 61 points
POINTS = {
    "backup logical": 3,
    "backup base": 3,
    "wal-push": 3,
    "wal-fetch": 3,
    "wal-prefetch": 2,
    "copy": 2,
    "expire": 2,
    "restore base": 2,
    "restore logical": 2,
}


@pytest.fixture(scope="module")
def store_world(object_store: Backend) -> Iterator[dict[str, Any]]:
    """A cluster archiving into a repository on ``object_store`` (the server reaches it through the backend's
    environment), with data, two logical backups, two full base backups and an incremental one on the second.

    ``source``: the data's fingerprint when they were taken; ``snapshot``: a copy of the repository on the same
    store, taken after setup, for the expire sweep (the same starting point at every kill point)."""
    backend = object_store
    prefix = f"crash-{uuid.uuid4().hex[:10]}"
    url = backend.url(prefix)
    repo = backend.repo(prefix)
    pg = LocalCluster.temporary(settings=archive_settings(url, fsync=False, max_connections=40))
    try:
        pg.start(env=backend.env)
        crash = _crash_database(pg, 20000)
        logical, _, inc = _backup_chain(pg, repo, crash, 2)
        source = _fingerprint(pg, "crash")
        _wait_archived(pg)
        snapshot = _copy_objects(repo, backend.repo(f"{prefix}-snapshot"))
        for _ in range(3):
            pg.execute(
                "insert into t select i, 'more' from generate_series(20001, 20100) i on conflict do nothing",
                dbname="crash",
            )
            pg.execute("select pg_switch_wal()")
        _wait_archived(pg)
        segments = _archived_segments(repo)
        yield {
            "backend": backend,
            "pg": pg,
            "url": url,
            "repo": repo,
            "env": dict(backend.env),
            "crash": crash,
            "source": source,
            "logical": logical,
            "inc": inc,
            "snapshot": snapshot,
            "segments": segments,
            "checker": Checker(repo, dict(backend.env)),
        }
    finally:
        pg.destroy()


def _copy_objects(source: Repository, dest: Repository) -> Repository:
    """Every object of ``source`` (a listing shows no unfinished upload) copied by the store itself into ``dest``
    (empty), as ``shutil.copytree`` copies a file:// repository."""
    keys = source.list_keys()
    source.fs.copy([source.path(k) for k in keys], [dest.path(k) for k in keys])
    assert dest.list_keys() == keys
    return dest


def _sweep(world: dict[str, Any], op: str) -> Sweep:
    return Sweep(op, where=world["backend"].name, points=POINTS[op])


def test_backup_logical_survives_kill_9_on_object_stores(
    store_world: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["backup", "logical", "--dbname", store_world["crash"], "--json"]
    _backup_sweep(store_world, "backup logical", args, capsys, _sweep(store_world, "backup logical"))


def test_backup_base_survives_kill_9_on_object_stores(
    store_world: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["backup", "base", "--dbname", store_world["pg"].conninfo(), "--json"]
    _backup_sweep(store_world, "backup base", args, capsys, _sweep(store_world, "backup base"))


def test_wal_push_survives_kill_9_on_object_stores(
    store_world: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    backend: Backend = store_world["backend"]
    base = f"crash-push-{uuid.uuid4().hex[:8]}"

    def new_repo(n: int) -> Repository:
        return backend.repo(f"{base}-{n}")

    _wal_push_sweep(store_world, tmp_path, capsys, new_repo, _sweep(store_world, "wal-push"))


def test_wal_fetch_survives_kill_9_on_object_stores(
    store_world: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _wal_fetch_sweep(store_world, tmp_path, capsys, _sweep(store_world, "wal-fetch"))


def test_wal_prefetch_survives_kill_9_on_object_stores(
    store_world: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _wal_prefetch_sweep(store_world, tmp_path, capsys, _sweep(store_world, "wal-prefetch"))


def test_copy_survives_kill_9_on_object_stores(store_world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """From the sweeps' repository into new ones on the same store: the newest logical backup, the incremental
    one and its full parent, with all the WAL (the sweeps above leave some 30 backups: copying and verifying every
    one at each kill point would take minutes). The source is never changed."""
    backend: Backend = store_world["backend"]
    base = f"crash-copy-{uuid.uuid4().hex[:8]}"
    counter = iter(range(10**6))

    def target() -> Repository:
        return backend.repo(f"{base}-{next(counter)}")

    inc = store_world["inc"]
    chosen = [store_world["logical"][-1].id, inc.physical.parent, inc.id]
    _copy_sweep(store_world, store_world["repo"], target, capsys, _sweep(store_world, "copy"), chosen)


def test_expire_survives_kill_9_on_object_stores(
    store_world: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """Each kill point expires a new repository on the store: a copy of the snapshot taken after setup."""
    backend: Backend = store_world["backend"]
    base = f"crash-expire-{uuid.uuid4().hex[:8]}"
    counter = iter(range(10**6))

    def fresh() -> Repository:
        return _copy_objects(store_world["snapshot"], backend.repo(f"{base}-{next(counter)}"))

    _expire_sweep(store_world, fresh, capsys, _sweep(store_world, "expire"))


def test_restore_base_survives_kill_9_on_object_stores(
    store_world: dict[str, Any], owned_dir: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """The incremental backup (files from two backups) into a local data directory; recovery reads WAL from the
    store."""
    pgdata = owned_dir("pgrecovery-crash-store-restore-") / "data"
    _restore_base_sweep(store_world, store_world["inc"].id, pgdata, capsys, _sweep(store_world, "restore base"))


def test_restore_logical_survives_kill_9_on_object_stores(
    store_world: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    _restore_logical_sweep(store_world, capsys, _sweep(store_world, "restore logical"))


def test_after_the_sweeps_the_repository_restores_exactly(
    store_world: dict[str, Any], owned_dir: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the kills left: `clean` aborts every upload a kill left unfinished (nothing else writes large
    objects here now: WAL segments go in one request) and the newest base backup restores to the source's exact
    rows."""
    from pgrecovery import RecoveryPlan, RecoveryTarget

    pg: LocalCluster = store_world["pg"]
    repo: Repository = store_world["repo"]
    time.sleep(1.5)
    left = repo.unfinished_uploads(1.0)
    res = run(cli(store_world["url"], "clean", "--uploads-older-than", str(1 / 3600), "--json"), env=store_world["env"])
    report = json.loads(res.check().out)
    assert report["removed"] == []  # the sweeps' own checks cleaned every leftover backup already
    assert sorted(u["key"] for u in report["unfinished_uploads"]) == sorted(u.key for u in left)
    assert repo.unfinished_uploads(1.0) == []
    print(f"\n{store_world['backend'].name}: {len(left)} unfinished uploads left by the kills, aborted by clean")
    source = _fingerprint(pg, "crash")
    pg.execute("select pg_switch_wal()")
    _wait_archived(pg)
    for k, v in store_world["env"].items():  # the recovering server's restore_command reads them
        monkeypatch.setenv(k, v)
    pgdata = owned_dir("pgrecovery-crash-store-restore-") / "data"
    result = RecoveryPlan(repo, RecoveryTarget.latest()).run(pgdata, settings={"archive_mode": "off"})
    restored = LocalCluster(data_dir=pgdata, port=result.port)
    try:
        assert _fingerprint(restored, "crash") == source
    finally:
        restored.stop(mode="immediate")
