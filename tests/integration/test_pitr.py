"""Point-in-time recovery on real clusters: base backup + archived WAL, every target kind, exact to the row."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from pgtesting import archiving_cluster
from pgtesting import owned_tmpdir as _owned_tmpdir
from pgtesting import wait_archived as _wait_archived

from pgrecovery import (
    BackupNotFound,
    BaseBackup,
    ConfigurationError,
    LocalCluster,
    RecoveryPlan,
    RecoveryTarget,
    Repository,
    TargetUnreachable,
    WalGap,
)
from pgrecovery.cli.main import main
from pgrecovery.copies import copy_repository

ROWS = "select count(*), coalesce(min(i), 0), coalesce(max(i), 0) from t"


@pytest.fixture(scope="module")
def story() -> Iterator[dict[str, Any]]:
    """A cluster archiving into a repository, a base backup, then three transactions with targets between them."""
    table = "create table t (i int primary key, at timestamptz not null default clock_timestamp())"
    with archiving_cluster("pgrecovery-pitr", table=table) as ctx:
        pg, repo, url = ctx.pg, ctx.repo, ctx.url
        backup = BaseBackup(dbname=pg.conninfo()).run(repo)
        facts: dict[str, Any] = {"repo": repo, "url": url, "backup": backup, "pg": pg}
        with pg.connect() as conn:
            conn.execute("insert into t (i) select generate_series(1, 100)")  # transaction A
            time.sleep(0.2)
            facts["after_a"] = conn.execute("select clock_timestamp()").fetchone()[0]  # type: ignore[index]
            time.sleep(0.2)
            conn.execute("select pg_create_restore_point('after_a')")
            conn.execute("select pg_switch_wal()")  # so that a segment lies between the backup and the newest
            with conn.transaction():  # transaction B
                facts["xid_b"] = int(conn.execute("select pg_current_xact_id()::text").fetchone()[0])  # type: ignore[index]
                conn.execute("insert into t (i) select generate_series(101, 200)")
            facts["lsn_after_b"] = conn.execute("select pg_current_wal_lsn()::text").fetchone()[0]  # type: ignore[index]
            time.sleep(0.2)
            conn.execute("insert into t (i) select generate_series(201, 300)")  # transaction C
        _wait_archived(pg)
        yield facts


@pytest.fixture
def pgdata() -> Iterator[Path]:
    base = _owned_tmpdir("pgrecovery-pitr-")
    data = base / "data"
    yield data
    cluster = LocalCluster(data_dir=data)
    if cluster.is_running():
        cluster.stop(mode="immediate")
    shutil.rmtree(base, ignore_errors=True)


def _recover(story: dict[str, Any], target: RecoveryTarget, pgdata: Path) -> tuple[Any, tuple[int, int, int]]:
    plan = RecoveryPlan(story["repo"], target)
    result = plan.run(pgdata, settings={"archive_mode": "off"})
    cluster = LocalCluster(data_dir=pgdata, port=result.port)
    try:
        rows = cluster.query(ROWS)[0]
    finally:
        cluster.stop()
    return result, (int(rows[0]), int(rows[1]), int(rows[2]))


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda s: RecoveryTarget.time(s["after_a"]), (100, 1, 100)),
        (lambda s: RecoveryTarget.name("after_a"), (100, 1, 100)),
        (lambda s: RecoveryTarget.xid(s["xid_b"]), (200, 1, 200)),
        (lambda s: RecoveryTarget.xid(s["xid_b"], inclusive=False), (100, 1, 100)),
        (lambda s: RecoveryTarget.lsn(s["lsn_after_b"]), (200, 1, 200)),
        (lambda s: RecoveryTarget.immediate(), (0, 0, 0)),
        (lambda s: RecoveryTarget.latest(), (300, 1, 300)),
    ],
    ids=["time", "name", "xid-inclusive", "xid-exclusive", "lsn", "immediate", "latest"],
)
def test_recovery_stops_exactly_at_the_target(
    story: dict[str, Any], pgdata: Path, make: Any, expected: tuple[int, int, int]
) -> None:
    result, rows = _recover(story, make(story), pgdata)
    assert rows == expected
    assert result.backup_id == story["backup"].id
    assert result.state == "promoted"
    assert result.timeline == 2  # promotion starts a new timeline
    assert (pgdata.stat().st_mode & 0o777) == 0o700
    # the incident record: what was asked, what was used, the WAL replayed, the timeline of steps
    incident = result.incident
    assert incident is not None
    assert incident.backup_id == story["backup"].id
    assert incident.target == make(story).describe()
    assert incident.end_lsn == result.end_lsn
    assert [s.step for s in incident.steps] == ["plan", "restore", "replay", "promoted"]
    assert all(a.at <= b.at for a, b in itertools.pairwise(incident.steps))
    assert incident.wal_restored == result.wal_restored
    if make(story).kind != "immediate":
        assert incident.wal_restored >= 1
        assert incident.first_wal is not None
    assert result.incident_key is not None
    stored = json.loads(story["repo"].read_bytes(result.incident_key))
    assert stored["backup_id"] == story["backup"].id
    assert stored["recovery_seconds"] == result.recovery_seconds


def test_target_before_the_oldest_backup_is_refused(story: dict[str, Any], pgdata: Path) -> None:
    before = story["backup"].started_at.replace(year=2020)
    with pytest.raises(TargetUnreachable, match="before the end of the oldest base backup"):
        RecoveryPlan(story["repo"], RecoveryTarget.time(before))
    assert not pgdata.exists()


def test_target_in_the_future_is_refused(story: dict[str, Any], pgdata: Path) -> None:
    plan = RecoveryPlan(story["repo"], RecoveryTarget.time("2999-01-01 00:00:00+00"))
    with pytest.raises(TargetUnreachable, match="in the future"):
        plan.restore(pgdata)
    assert not pgdata.exists()


def test_naive_time_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="no time zone"):
        RecoveryTarget.time(datetime(2026, 1, 1))


def test_wal_gap_is_named_before_anything_is_written(story: dict[str, Any], pgdata: Path) -> None:
    copy = _owned_tmpdir("pgrecovery-gap-")
    try:
        shutil.copytree(Path(story["repo"].root), copy, dirs_exist_ok=True)
        repo = Repository(f"file://{copy}")
        start = story["backup"].physical.start_wal
        victim = next(p for p in sorted((copy / "wal").rglob(f"{start[:16]}*")) if p.name[:24] > start)
        victim.unlink()
        plan = RecoveryPlan(repo, RecoveryTarget.latest())
        with pytest.raises(WalGap, match=victim.name[:24]):
            plan.restore(pgdata)
        assert not pgdata.exists()
    finally:
        shutil.rmtree(copy, ignore_errors=True)


def test_non_empty_pgdata_is_refused(story: dict[str, Any], pgdata: Path) -> None:
    pgdata.mkdir()
    (pgdata / "precious").write_text("keep me")
    with pytest.raises(ConfigurationError, match="not empty"):
        RecoveryPlan(story["repo"], RecoveryTarget.latest()).restore(pgdata)
    assert (pgdata / "precious").read_text() == "keep me"


def test_unknown_backup_id(story: dict[str, Any]) -> None:
    with pytest.raises(BackupNotFound):
        RecoveryPlan(story["repo"], RecoveryTarget.latest(), backup_id="20000101T000000Z-base")


def test_cli_restore_base_runs_to_a_target(
    story: dict[str, Any], pgdata: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    code = main(
        ["--repo", story["url"], "--json", "restore", "base", "latest", "--pgdata", str(pgdata),
         "--target-xid", str(story["xid_b"]), "--exclusive", "--run", "--no-archive"]
    )  # fmt: skip
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    cluster = LocalCluster(data_dir=pgdata, port=result["port"])
    try:
        assert cluster.query(ROWS)[0] == (100, 1, 100)
    finally:
        cluster.stop()


def test_action_pause_leaves_the_server_paused_at_the_target(story: dict[str, Any], pgdata: Path) -> None:
    plan = RecoveryPlan(story["repo"], RecoveryTarget.xid(story["xid_b"], action="pause"))
    result = plan.run(pgdata, settings={"archive_mode": "off"})
    assert result.state == "paused"
    cluster = LocalCluster(data_dir=pgdata, port=result.port)
    try:
        assert cluster.query("select pg_is_in_recovery(), pg_get_wal_replay_pause_state()")[0] == (True, "paused")
        assert cluster.query(ROWS)[0] == (200, 1, 200)
    finally:
        cluster.stop()


def test_action_shutdown_stops_the_server_at_the_target(story: dict[str, Any], pgdata: Path) -> None:
    plan = RecoveryPlan(story["repo"], RecoveryTarget.time(story["after_a"], action="shutdown"))
    result = plan.run(pgdata, settings={"archive_mode": "off"})
    assert result.state == "shut down"
    assert not LocalCluster(data_dir=pgdata).is_running()
    assert result.end_lsn is None  # nothing to ask a stopped server; its log says where it stopped
    assert "recovery stopping" in (pgdata.parent / "data.log").read_text()


def test_target_timeline_must_be_valid() -> None:
    with pytest.raises(ConfigurationError, match="target timeline 'newest'"):
        RecoveryTarget.latest().with_timeline("newest")
    assert RecoveryTarget.immediate().with_timeline(1).settings()["recovery_target_timeline"] == "1"


def test_a_copy_of_the_repository_recovers_the_same(story: dict[str, Any], pgdata: Path) -> None:
    """The 3-2-1 copy is a repository in its own right: the same point in time comes back from it alone."""
    root = _owned_tmpdir("pgrecovery-pitr-copy-")
    try:
        copy = Repository(f"file://{root}")
        result = copy_repository(story["repo"], copy)
        assert result.ok
        assert story["backup"].id in result.backups_copied
        assert result.wal_copied >= 2
        assert copy_repository(story["repo"], copy).bytes_copied == 0  # rerun: nothing left to do
        for path, _, files in os.walk(root) if os.getuid() == 0 else ():  # the server's user reads the copy
            for name in [path, *(os.path.join(path, f) for f in files)]:
                shutil.chown(name, "postgres", "postgres")
        plan = RecoveryPlan(copy, RecoveryTarget.xid(story["xid_b"]))
        recovered = plan.run(pgdata, settings={"archive_mode": "off"})
        cluster = LocalCluster(data_dir=pgdata, port=recovered.port)
        try:
            assert tuple(int(x) for x in cluster.query(ROWS)[0]) == (200, 1, 200)
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
