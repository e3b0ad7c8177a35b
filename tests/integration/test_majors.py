"""The server-facing core on PostgreSQL 16, 17 and 18 (15 runs the whole suite): one archiving cluster per major.

Per major, in order (module scope, the tests share the story): a logical round trip equal by fingerprint; base
backups by both methods and an incremental one; point-in-time recovery to a time, a name, an xid and an LSN (the
LSN one restores the incremental chain), WAL fetched by restore_command with prefetch; the restore drill; a bad
target refused; then a promotion (timeline 2) and a second recovery along it; last, a damaged object detected.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pgtesting import Archiving, Major
from pgtesting import wait_archived as _wait_archived

from pgrecovery import (
    BaseBackup,
    LocalCluster,
    LogicalBackup,
    LogicalRestore,
    RecoveryPlan,
    RecoveryTarget,
    TargetUnreachable,
    Verifier,
)
from pgrecovery.pgtools import find_tool

pytestmark = pytest.mark.parametrize("major", [16, 17, 18], indirect=True, ids=lambda n: f"pg{n}")

FINGERPRINT = "select count(*), coalesce(sum(i), 0), md5(coalesce(string_agg(t::text, ',' order by i), '')) from t"
ROWS = "select count(*), coalesce(min(i), 0), coalesce(max(i), 0) from t"


@pytest.fixture(autouse=True)
def _use_major(major: Major) -> Iterator[None]:
    """Every program the library runs in a test (and every server it starts) is this major's."""
    with major.active():
        yield


@pytest.fixture(scope="module")
def story(major: Major) -> Iterator[dict[str, Any]]:
    """A cluster of ``major`` archiving into its repository: full backup, A, restore point, incremental backup, B,
    stream backup, C; the targets between them."""
    with major.active():
        ctx = Archiving(f"pgrecovery-pg{major.number}")
        try:
            pg = ctx.pg
            pg.start()
            pg.execute("create table t (i int primary key, note text)")
            pg.execute("insert into t select i, md5(i::text) from generate_series(-999, 0) i")
            facts: dict[str, Any] = {"ctx": ctx, "pg": pg, "repo": ctx.repo}
            facts["full"] = BaseBackup(dbname=pg.conninfo()).run(ctx.repo)
            with pg.connect() as conn:
                conn.execute("insert into t select i, 'a' from generate_series(1, 100) i")  # A
                time.sleep(0.2)
                facts["after_a"] = conn.execute("select clock_timestamp()").fetchone()[0]  # type: ignore[index]
                time.sleep(0.2)
                conn.execute("select pg_create_restore_point('after_a')")
                conn.execute("select pg_switch_wal()")
            facts["inc"] = BaseBackup(dbname=pg.conninfo(), parent="latest").run(ctx.repo)
            with pg.connect() as conn:
                with conn.transaction():  # B
                    facts["xid_b"] = int(conn.execute("select pg_current_xact_id()::text").fetchone()[0])  # type: ignore[index]
                    conn.execute("insert into t select i, 'b' from generate_series(101, 200) i")
                facts["lsn_after_b"] = conn.execute("select pg_current_wal_lsn()::text").fetchone()[0]  # type: ignore[index]
            facts["stream"] = BaseBackup(dbname=pg.conninfo(), method="stream").run(ctx.repo)
            pg.execute("insert into t select i, 'c' from generate_series(201, 300) i")  # C
            facts["want"] = pg.query(FINGERPRINT)[0]
            _wait_archived(pg)
            yield facts
        finally:
            ctx.close()


def _recover(story: dict[str, Any], target: RecoveryTarget, **kw: Any) -> tuple[Any, Path]:
    pgdata = story["ctx"].pgdata()
    result = RecoveryPlan(story["repo"], target).run(pgdata, **kw)
    return result, pgdata


def _rows(cluster: LocalCluster, sql: str = ROWS) -> tuple[Any, ...]:
    try:
        return tuple(cluster.query(sql)[0])
    finally:
        cluster.stop()


def test_the_server_and_programs_are_this_major(major: Major, story: dict[str, Any]) -> None:
    (num,) = story["pg"].query("select current_setting('server_version_num')::int")[0]
    assert num // 10000 == major.number
    assert story["full"].server_version.startswith(f"{major.number}.")
    assert find_tool("pg_dump").bindir == major.bindir
    # checksums on, as LocalCluster asks (initdb 18 would turn them on by itself; older ones need the flag)
    assert story["pg"].query("show data_checksums")[0][0] == "on"
    if major.number >= 17:  # WAL summarization exists from 17 on (off unless asked for)
        assert story["pg"].query("show summarize_wal")[0][0] == "off"
    else:
        assert story["pg"].query("select count(*) from pg_settings where name = 'summarize_wal'")[0][0] == 0


def test_logical_round_trip_is_equal(story: dict[str, Any]) -> None:
    pg, repo = story["pg"], story["repo"]
    src = pg.create_database("majors_src")
    pg.execute(
        "create table items (id bigint generated always as identity primary key, name text not null unique,"
        " tags text[], doc jsonb, at timestamptz default now()); create view v as select id, name from items;"
        " create function f(x int) returns int language sql immutable as 'select x + 1';"
        " insert into items (name, tags, doc) select 'n' || g, array['x', g::text], jsonb_build_object('g', g)"
        " from generate_series(1, 2000) g; create index on items using gin (doc);",
        dbname="majors_src",
    )
    from test_logical_roundtrip import assert_same, fingerprint

    for fmt in ("custom", "directory"):
        m = LogicalBackup(dbname=src, format=fmt).run(repo)  # type: ignore[arg-type]
        target = pg.conninfo(f"majors_{fmt}")
        LogicalRestore(repo, m.id).run(target, create=True, jobs=2 if fmt == "directory" else 1)
        assert_same(fingerprint(target), fingerprint(src))
    story["logical"] = m


def test_pitr_to_a_time_and_a_name_from_the_full_backup(story: dict[str, Any]) -> None:
    for target in (RecoveryTarget.time(story["after_a"]), RecoveryTarget.name("after_a")):
        result, pgdata = _recover(story, target)
        assert result.backup_id == story["full"].id
        assert result.timeline == 2
        assert _rows(LocalCluster(data_dir=pgdata, port=result.port)) == (1100, -999, 100)
        # restore_command fetched the WAL and asked the prefetcher to work ahead
        assert result.wal_restored >= 1
        assert (pgdata / "pgrecovery_spool" / "prefetch" / ".wanted").exists()


def test_pitr_to_an_xid_and_an_lsn(story: dict[str, Any]) -> None:
    result, pgdata = _recover(story, RecoveryTarget.xid(story["xid_b"]))
    assert _rows(LocalCluster(data_dir=pgdata, port=result.port)) == (1200, -999, 200)
    # the LSN after B lies after the incremental backup: its chain (incremental + full) is restored
    result, pgdata = _recover(story, RecoveryTarget.lsn(story["lsn_after_b"]))
    assert result.backup_id == story["inc"].id
    assert story["inc"].physical.parent == story["full"].id
    assert _rows(LocalCluster(data_dir=pgdata, port=result.port)) == (1200, -999, 200)


def test_stream_backup_restores_to_the_latest_and_passes_the_drill(major: Major, story: dict[str, Any]) -> None:
    result, pgdata = _recover(story, RecoveryTarget.latest())
    assert result.backup_id == story["stream"].id
    assert story["stream"].physical.method == "stream"
    assert _rows(LocalCluster(data_dir=pgdata, port=result.port), FINGERPRINT) == story["want"]

    report = Verifier(story["repo"]).verify(story["stream"].id, drill=True)
    assert report.ok, report.to_dict()
    checks = {c.name: c for c in report.checks}
    assert "pg_verifybackup: files match" in checks["restore-drill"].detail

    logical = Verifier(story["repo"]).verify(story["logical"].id, drill=True)
    assert logical.ok, logical.to_dict()
    text = str(logical.to_dict())
    if major.number == 16:  # this server has no contrib: amcheck is reported skipped, never passed silently
        assert "amcheck: skipped, not installed" in text
    else:
        assert "B-tree index(es) checked" in text


def test_a_target_in_the_future_is_refused_before_anything_is_written(story: dict[str, Any]) -> None:
    pgdata = story["ctx"].pgdata()
    with pytest.raises(TargetUnreachable, match="in the future"):
        RecoveryPlan(story["repo"], RecoveryTarget.time("2999-01-01 00:00:00+00")).restore(pgdata)
    assert not pgdata.exists()


def test_promotion_then_a_second_recovery_along_timeline_2(story: dict[str, Any]) -> None:
    pg, repo = story["pg"], story["repo"]
    (mark,) = pg.query("select clock_timestamp()")[0]
    time.sleep(0.2)
    pg.execute("insert into t select i, 'mistake' from generate_series(301, 400) i")
    _wait_archived(pg)
    pg.stop()

    first = RecoveryPlan(repo, RecoveryTarget.time(mark)).run(story["ctx"].pgdata(), archive=True)
    assert first.timeline == 2
    recovered = first.cluster
    assert recovered.query(ROWS)[0] == (1300, -999, 300)
    recovered.execute("insert into t select i, 'tl2' from generate_series(1001, 1050) i")
    (mark2,) = recovered.query("select clock_timestamp()")[0]
    time.sleep(0.2)
    recovered.execute("insert into t select i, 'later' from generate_series(2001, 2050) i")
    _wait_archived(recovered)
    recovered.stop()

    second, pgdata = _recover(story, RecoveryTarget.time(mark2))
    assert second.timeline == 3
    assert _rows(LocalCluster(data_dir=pgdata, port=second.port)) == (1350, -999, 1050)


def test_a_damaged_object_is_detected(story: dict[str, Any]) -> None:
    repo, full = story["repo"], story["full"]
    bundle = next(f for f in full.files if f.role.startswith("bundle-"))
    path = Path(repo.root) / "backups" / full.id / bundle.path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    report = Verifier(repo).verify(full.id)
    assert not report.ok
    checks = {c.name: c for c in report.checks}
    assert checks["checksums"].status == "fail"
    assert bundle.path in checks["checksums"].detail


def test_pg_dump_leaves_statistics_out_unless_asked(major: Major, story: dict[str, Any]) -> None:
    """pg_dump 18 can dump planner statistics: pgrecovery leaves them out by default (docs/support.md)."""
    from pgrecovery.pgtools import pg_dump_command, run

    pg = story["pg"]
    if not pg.is_running():  # the timeline story stopped it
        pg.start()
    pg.execute("analyze t")
    tool = find_tool("pg_dump")
    for only in ({"schema_only": True}, {"data_only": True}, {}):
        default = run(pg_dump_command(tool, pg.conninfo(), fmt="plain", tables=["public.t"], **only))
        assert b"STATISTICS DATA" not in default.stdout
        asked = run(pg_dump_command(tool, pg.conninfo(), fmt="plain", tables=["public.t"], statistics=True, **only))
        # only pg_dump 18 and newer can dump them, and only with the schema and the data
        assert (b"STATISTICS DATA" in asked.stdout) == (major.number >= 18 and not only)
