"""Part 3 of ``bench_physical.py``: recovery of a base backup and its WAL with and without prefetch, against
replay alone (see that script's docstring)."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import DBNAME, MB, generate_wal, postgres_dir, rotated, wait_archived

from pgrecovery import BaseBackup, LocalCluster, RecoveryPlan, RecoveryTarget, Repository
from pgrecovery import _walnames as wn
from pgrecovery.cluster import default_run_as
from pgrecovery.manifest import BackupManifest
from pgrecovery.wal.archiver import WalArchiver, restore_command

PREFETCH = "restore_command (prefetch, default)"
NO_PREFETCH = "restore_command(prefetch=False)"
REPLAY_ONLY = "WAL already in pg_wal (replay only, floor)"


def prepare_replay(
    cluster: LocalCluster, repo: Repository, conninfo: str, segments: int
) -> tuple[BackupManifest, list[str], int]:
    """A base backup, then at least ``segments`` segments of WAL archived, then the server stopped: the backup, the
    segments a recovery replays, and the bytes of WAL written."""
    base = BaseBackup(dbname=conninfo, workers=2, compression="zstd", level=1).run(repo)
    assert base.physical is not None
    accounts = int(cluster.query("select count(*) from pgbench_accounts", dbname=DBNAME)[0][0])
    events = int(cluster.query("select max(id) from bench_events", dbname=DBNAME)[0][0])
    wal_bytes, wal_s = generate_wal(cluster, segments, accounts, events)
    t0 = time.perf_counter()
    wait_archived(cluster)
    # No autovacuum or checkpoints of the source competing with the recoveries. The server archives the
    # segment holding its shutdown checkpoint as it stops: that one is replayed too.
    cluster.stop()
    names = WalArchiver(repo).list_archived().get(1, [])
    replay = [n for n in names if wn.is_segment(n) and n >= base.physical.start_wal]
    print(
        f"  {wal_bytes / MB:,.0f} MB of WAL in {wal_s:.1f} s, archived {time.perf_counter() - t0:.1f} s later; "
        f"{len(replay)} segments from {replay[0]} to {replay[-1]} to replay"
    )
    return base, replay, wal_bytes


@dataclass
class RecoveryRun:
    seconds: list[float] = field(default_factory=list)
    restore: list[float] = field(default_factory=list)
    restored_files: list[int] = field(default_factory=list)
    end_lsn: list[str] = field(default_factory=list)


def recover_once(repo: Repository, pgdata: Path, settings: dict[str, object]) -> tuple[float, float, int, str]:
    """Restore the latest base backup and replay the whole archive; (recovery s, restore s, files restored, LSN)."""
    result = RecoveryPlan(repo, RecoveryTarget.latest()).run(pgdata, settings=settings)
    LocalCluster(data_dir=pgdata, port=result.port).stop()
    WalArchiver(repo).wait_for_prefetch(pgdata / "pgrecovery_spool")
    log = pgdata.with_name(pgdata.name + ".log").read_text(errors="replace")
    restored = re.findall(r'restored log file "([^"]+)" from archive', log)
    return result.recovery_seconds, result.restore_seconds, len(restored), str(result.end_lsn)


def replay_only_once(repo: Repository, pgdata: Path, segments: Sequence[str]) -> tuple[float, float, int, str]:
    """The floor: the same recovery with every segment already in pg_wal (copied there untimed) and a
    restore_command that always fails at once, so that the server reads pg_wal: replay alone."""
    plan = RecoveryPlan(repo, RecoveryTarget.latest())
    t0 = time.perf_counter()
    plan.restore(pgdata, settings={"restore_command": "false", "archive_mode": "off"})
    restore_s = time.perf_counter() - t0
    archiver = WalArchiver(repo)
    who = default_run_as()
    ids = (pwd.getpwnam(who).pw_uid, pwd.getpwnam(who).pw_gid) if who else None
    for name in segments:
        dest = pgdata / "pg_wal" / name
        archiver.fetch(name, dest, prefetch=False)
        if ids:
            os.chown(dest, *ids)
    result = plan.run(pgdata, restore=False)
    LocalCluster(data_dir=pgdata, port=result.port).stop()
    return result.recovery_seconds, restore_s, 0, str(result.end_lsn)


def run_recovery_rounds(repo: Repository, rounds: int, segments: Sequence[str]) -> dict[str, RecoveryRun]:
    """Every round runs every variant once, in an order rotated by one each round."""
    workdir = postgres_dir("pgrecovery-bench-recover-")
    no_prefetch: dict[str, object] = {
        "restore_command": restore_command(repo.url, prefetch=False),
        "archive_mode": "off",
    }
    variants: dict[str, Callable[[Path], tuple[float, float, int, str]]] = {
        PREFETCH: lambda pgdata: recover_once(repo, pgdata, {"archive_mode": "off"}),
        NO_PREFETCH: lambda pgdata: recover_once(repo, pgdata, no_prefetch),
        REPLAY_ONLY: lambda pgdata: replay_only_once(repo, pgdata, segments),
    }
    results = {name: RecoveryRun() for name in variants}
    names = list(variants)
    try:
        for r in range(rounds):
            for i, name in enumerate(rotated(names, r)):
                pgdata = workdir / f"round{r}-{i}"
                try:
                    rec, res, files, lsn = variants[name](pgdata)
                finally:
                    shutil.rmtree(pgdata, ignore_errors=True)
                    pgdata.with_name(pgdata.name + ".log").unlink(missing_ok=True)
                run = results[name]
                run.seconds.append(rec)
                run.restore.append(res)
                run.restored_files.append(files)
                run.end_lsn.append(lsn)
                print(
                    f"  round {r + 1}/{rounds}  {name:<42} recovery {rec:7.2f} s  (restore {res:5.2f} s, "
                    f"{files} WAL files from the archive, end {lsn})",
                    flush=True,
                )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def report_recovery(results: dict[str, RecoveryRun], info: dict[str, Any]) -> list[Any]:
    print(
        f"\n3. recovery of base backup + {info['segments']} archived segments ({info['wal_bytes'] / MB:,.0f} MB "
        f"of WAL from bulk updates), {info['rounds']} rounds"
    )
    header = (
        f"{'restore_command':<42} {'median s':>9} {'min s':>8} {'restore s':>10} {'vs no prefetch':>15} {'vs floor':>9}"
    )
    print(header)
    print("-" * len(header))
    ends = {lsn for run in results.values() for lsn in run.end_lsn}
    if len(ends) > 1:
        print(f"warning: the recoveries did not all end at the same LSN: {sorted(ends)}")
    base = statistics.median(results[NO_PREFETCH].seconds)
    floor = statistics.median(results[REPLAY_ONLY].seconds)
    rows = []
    for name, run in results.items():
        median = statistics.median(run.seconds)
        restore = statistics.median(run.restore)
        print(
            f"{name:<42} {median:9.2f} {min(run.seconds):8.2f} {restore:10.2f} {median / base:14.2f}x "
            f"{median / floor:8.2f}x"
        )
        rows.append(
            {
                "method": name,
                "recovery_seconds": run.seconds,
                "median_s": median,
                "restore_seconds": run.restore,
                "restored_wal_files": run.restored_files,
                "end_lsn": run.end_lsn,
                "ratio_vs_no_prefetch": median / base,
                "ratio_vs_replay_only": median / floor,
                "paired_ratio_vs_no_prefetch": statistics.median(
                    a / b for a, b in zip(run.seconds, results[NO_PREFETCH].seconds, strict=True)
                ),
            }
        )
    return rows
