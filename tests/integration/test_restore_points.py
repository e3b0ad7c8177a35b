"""Named restore points known before anything is written: found in the archived WAL (pg_waldump is the oracle) or
in what pgrecovery recorded when it made them; the newest backup that precedes the point is chosen, and a backup
that cannot reach it (or a name that exists nowhere) is refused in one line, with nothing written."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pgtesting import FINGERPRINT, Archiving, archiving_cluster, owned_tmpdir, run_cli, wait_archived

from pgrecovery import BaseBackup, LocalCluster, RecoveryPlan, RecoveryTarget, TargetUnreachable, WalArchiver, pgtools
from pgrecovery.wal.index import WalIndex
from pgrecovery.wal.restore_points import find_in_segment, read_segment, recorded


def _fill(ctx: Archiving, first: int, last: int) -> None:
    ctx.pg.execute(f"insert into t select i, md5(i::text) from generate_series({first}, {last}) i")


def _sql_point(ctx: Archiving, name: str) -> str:
    return str(ctx.pg.query(f"select pg_create_restore_point('{name}')::text")[0][0])


@pytest.fixture(scope="module")
def story() -> Iterator[dict[str, Any]]:
    """Backup A; point ``between`` (SQL) and the first ``twice``; backup B; ``after_b`` (SQL), the second ``twice``,
    and ``recorded_one`` (made through the API, so recorded); rows keep changing between all of them."""
    with archiving_cluster("pgrecovery-rp") as ctx:
        facts: dict[str, Any] = {"ctx": ctx, "lsn": {}, "fp": {}}

        def point(name: str, how: str = "sql") -> None:
            if how == "sql":
                lsn = _sql_point(ctx, name)
            else:
                lsn = WalArchiver(ctx.repo).create_restore_point(ctx.pg.conninfo(), name)
            facts["lsn"].setdefault(name, []).append(lsn)
            facts["fp"].setdefault(name, ctx.pg.query(FINGERPRINT)[0])

        _fill(ctx, 1, 100)
        facts["a"] = BaseBackup(dbname=ctx.pg.conninfo()).run(ctx.repo).id
        _fill(ctx, 101, 200)
        point("between")
        _fill(ctx, 201, 250)
        point("twice")
        ctx.pg.execute("select pg_switch_wal()")  # a segment between the points and backup B
        _fill(ctx, 251, 300)
        facts["b"] = BaseBackup(dbname=ctx.pg.conninfo()).run(ctx.repo).id
        _fill(ctx, 301, 400)
        point("after_b")
        _fill(ctx, 401, 450)
        point("twice")
        facts["fp"]["twice_second"] = ctx.pg.query(FINGERPRINT)[0]
        _fill(ctx, 451, 500)
        point("recorded_one", how="api")
        _fill(ctx, 501, 600)
        wait_archived(ctx.pg)
        yield facts


def _run_to(story: dict[str, Any], plan: RecoveryPlan) -> tuple[Any, ...]:
    ctx: Archiving = story["ctx"]
    pgdata = ctx.pgdata()
    result = plan.run(pgdata)
    with result:
        return tuple(LocalCluster(data_dir=pgdata, port=result.port).query(FINGERPRINT)[0])


@pytest.mark.parametrize(
    ("name", "backup", "occurrence", "fingerprint"),
    [("between", "a", 0, "between"), ("after_b", "b", 0, "after_b"), ("twice", "b", 1, "twice_second")],
    ids=["between-backups", "after-the-newest", "twice-the-second-after-B"],
)
def test_the_newest_backup_before_the_point_is_chosen_and_reaches_it(
    story: dict[str, Any], name: str, backup: str, occurrence: int, fingerprint: str
) -> None:
    plan = RecoveryPlan(story["ctx"].repo, RecoveryTarget.name(name))
    assert plan.backup.id == story[backup]
    point = plan.restore_point
    assert point is not None
    assert (point.source, point.timeline) == ("wal", 1)
    assert point.lsn == story["lsn"][name][occurrence]  # the occurrence PostgreSQL stops at
    assert _run_to(story, plan) == tuple(story["fp"][fingerprint])


def test_a_recorded_point_is_found_without_reading_wal(
    story: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ctx: Archiving = story["ctx"]
    (rec,) = recorded(ctx.repo, "recorded_one")
    assert (rec.lsn, rec.timeline) == (story["lsn"]["recorded_one"][0], 1)
    assert rec.system_identifier == str(ctx.pg.query("select system_identifier from pg_control_system()")[0][0])

    def no_scan(*args: object, **kwargs: object) -> None:
        raise AssertionError("the WAL was scanned for a recorded restore point")

    monkeypatch.setattr("pgrecovery.recovery._points.scan_segments", no_scan)
    plan = RecoveryPlan(ctx.repo, RecoveryTarget.name("recorded_one"))
    assert plan.backup.id == story["b"]
    assert plan.restore_point is not None
    assert plan.restore_point.source == "recorded"
    assert _run_to(story, plan) == tuple(story["fp"]["recorded_one"])
    # the CLI records too when it has a repository, and restore base says where the point is
    code, out, err = run_cli(capsys, "--repo", ctx.url, "--json", "restore-point", "cli_one", "-d", ctx.pg.conninfo())
    assert code == 0, err
    made = json.loads(out)
    assert made["recorded"] is True
    assert [p.lsn for p in recorded(ctx.repo, "cli_one")] == [made["lsn"]]
    pgdata = ctx.pgdata()
    code, _, err = run_cli(  # recorded, but its WAL is not archived yet: refused, naming the segment
        capsys, "--repo", ctx.url, "restore", "base", "--pgdata", str(pgdata), "--target-name", "cli_one"
    )
    assert code != 0, err
    assert "is missing from" in err
    assert not pgdata.exists()
    wait_archived(ctx.pg)
    code, out, err = run_cli(
        capsys, "--repo", ctx.url, "--json", "restore", "base", "--pgdata", str(pgdata), "--target-name", "cli_one"
    )
    assert code == 0, err
    shown = json.loads(out)
    assert shown["backup_id"] == story["b"]
    assert shown["restore_point"] == {
        "name": "cli_one",
        "lsn": made["lsn"],
        "timeline": 1,
        "time": shown["restore_point"]["time"],
        "source": "recorded",
    }


def test_an_explicit_backup_after_the_point_is_refused_before_anything_is_written(
    story: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    ctx: Archiving = story["ctx"]
    with pytest.raises(TargetUnreachable) as info:
        RecoveryPlan(ctx.repo, RecoveryTarget.name("between"), backup_id=story["b"])
    text = str(info.value)
    physical = ctx.repo.get(story["b"]).physical
    assert physical is not None
    stop = physical.stop_lsn
    assert story["lsn"]["between"][0] in text
    assert stop in text
    assert "\n" not in text
    pgdata = ctx.pgdata()
    code, _, err = run_cli(
        capsys, "--repo", ctx.url, "restore", "base", story["b"], "--pgdata", str(pgdata), "--target-name", "between"
    )
    assert code != 0, err
    assert story["lsn"]["between"][0] in err
    assert len(err.strip().splitlines()) == 1, err
    assert not pgdata.exists()
    # the same backup reaches a point after it
    assert RecoveryPlan(ctx.repo, RecoveryTarget.name("after_b"), backup_id=story["b"]).restore_point is not None


def test_an_unknown_name_is_refused_in_one_line(story: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    ctx: Archiving = story["ctx"]
    with pytest.raises(TargetUnreachable, match="no restore point named 'nowhere' in the archive or the repository"):
        RecoveryPlan(ctx.repo, RecoveryTarget.name("nowhere"))
    pgdata = ctx.pgdata()
    code, _, err = run_cli(capsys, "--repo", ctx.url, "restore", "base", "--pgdata", str(pgdata), "--target-name", "x")
    assert code != 0, err
    assert "no restore point named 'x'" in err
    assert len(err.strip().splitlines()) == 1, err
    assert not pgdata.exists()


def test_an_unreadable_segment_is_said_not_guessed(story: dict[str, Any], tmp_path: Path) -> None:
    """A segment the search needs that cannot be read: the plan says it cannot tell, it does not pick a backup."""
    from pgrecovery import Repository

    ctx: Archiving = story["ctx"]
    root = owned_tmpdir("pgrecovery-rp-copy-")
    subprocess.run(["cp", "-a", f"{ctx.root}/.", str(root)], check=True)
    copy = Repository(f"file://{root}")
    newest = max(n for n in WalIndex(copy).index(1) if len(n) == 24)
    obj = WalIndex(copy).find(newest)
    assert obj is not None
    (root / obj.key).write_bytes(b"not a segment")
    with pytest.raises(TargetUnreachable, match=f"cannot tell where restore point 'nowhere' is: .*{newest}"):
        RecoveryPlan(copy, RecoveryTarget.name("nowhere"))
    subprocess.run(["rm", "-rf", str(root)], check=True)


def test_the_parser_agrees_with_pg_waldump(story: dict[str, Any]) -> None:
    """Every RESTORE_POINT record pg_waldump prints in each archived segment, and nothing else, at the same LSN."""
    ctx: Archiving = story["ctx"]
    waldump = pgtools.find_tool("pg_waldump")
    index = WalIndex(ctx.repo)
    work = owned_tmpdir("pgrecovery-rp-waldump-")
    seen: set[tuple[str, str]] = set()
    try:
        for name in sorted(n for n in index.index(1) if len(n) == 24):
            data = read_segment(index, name)
            assert data is not None
            (work / name).write_bytes(data)
            run = subprocess.run([str(waldump.path), str(work / name)], capture_output=True, text=True)
            oracle = set(re.findall(r"lsn: ([0-9A-F]+/[0-9A-F]+), prev [^,]+, desc: RESTORE_POINT (\S+)", run.stdout))
            ours = set()
            for point_name in {n for _, n in oracle} | {"between", "twice", "after_b", "nowhere"}:
                lsn = int(name[8:16], 16) << 32 | int(name[16:], 16) * 16 * 1024 * 1024
                for p in find_in_segment(data, point_name, segment_lsn=lsn):
                    assert p.record_lsn is not None
                    high, low = p.record_lsn.split("/")
                    ours.add((f"{int(high, 16):X}/{int(low, 16):08X}", p.name))
            assert ours == oracle, (name, run.stderr)
            seen |= oracle
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=True)
    assert {n for _, n in seen} >= {"between", "twice", "after_b", "recorded_one"}


def test_timelines_the_point_on_the_target_history_is_the_one_found() -> None:
    """A name used on timeline 1 after the branch point and again on timeline 2: recovery to timeline latest finds
    (and reaches) timeline 2's, to timeline 1 the abandoned one; a point before the branch is found on both."""
    with archiving_cluster("pgrecovery-rp-tli") as ctx:
        _fill(ctx, 1, 100)
        BaseBackup(dbname=ctx.pg.conninfo()).run(ctx.repo)
        _fill(ctx, 101, 200)
        shared = _sql_point(ctx, "shared")
        fp_shared = ctx.pg.query(FINGERPRINT)[0]
        branch = str(ctx.pg.query("select pg_current_wal_lsn()::text")[0][0])
        _fill(ctx, 201, 300)
        old = _sql_point(ctx, "abandoned")
        fp_old = ctx.pg.query(FINGERPRINT)[0]
        wait_archived(ctx.pg)
        with RecoveryPlan(ctx.repo, RecoveryTarget.lsn(branch)).run(
            ctx.pgdata(), archive=True, record_incident=False
        ) as replacement:
            assert replacement.timeline == 2
            BaseBackup(dbname=replacement.cluster.conninfo()).run(ctx.repo)  # the newest backup is on timeline 2
            replacement.cluster.execute("insert into t select i, 'new' from generate_series(1000, 1100) i")
            new = str(replacement.cluster.query("select pg_create_restore_point('abandoned')::text")[0][0])
            fp_new = replacement.cluster.query(FINGERPRINT)[0]
            wait_archived(replacement.cluster)
        _fill(ctx, 301, 350)  # timeline 1 goes on after the branch
        tl1_only = _sql_point(ctx, "tl1_only")
        fp_tl1_only = ctx.pg.query(FINGERPRINT)[0]
        wait_archived(ctx.pg)
        with pytest.raises(TargetUnreachable, match="no restore point named 'tl1_only'"):
            RecoveryPlan(ctx.repo, RecoveryTarget.name("tl1_only"))  # not on timeline 2's history
        cases = [
            (RecoveryTarget.name("abandoned"), new, 2, fp_new),
            (RecoveryTarget.name("abandoned").with_timeline(1), old, 1, fp_old),
            (RecoveryTarget.name("shared"), shared, 1, fp_shared),
            (RecoveryTarget.name("tl1_only").with_timeline("current"), tl1_only, 1, fp_tl1_only),  # from backup A
        ]
        for target, lsn, timeline, fingerprint in cases:
            plan = RecoveryPlan(ctx.repo, target)
            assert plan.restore_point is not None
            assert (plan.restore_point.lsn, plan.restore_point.timeline) == (lsn, timeline), target.describe()
            pgdata = ctx.pgdata()
            with plan.run(pgdata, record_incident=False) as result:
                assert tuple(result.cluster.query(FINGERPRINT)[0]) == tuple(fingerprint), target.describe()
