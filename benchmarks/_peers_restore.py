"""Parts 2-4 of ``bench_peers.py``: base backups into S3, and restore + replay to a promoted, queryable server
(local repositories and S3), with pgrecovery's replay also against the same WAL already in pg_wal."""

from __future__ import annotations

import json
import re
import shutil
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from _common import MB, postgres_dir, rotated
from _peers_setup import BUCKET, S3, PgBackRest, barman, barman_wal_restore, drain, run_pg, set_archive_command
from _physical_recovery import replay_only_once

from pgrecovery import BaseBackup, LocalCluster, RecoveryPlan, RecoveryTarget, Repository
from pgrecovery.wal.archiver import WalArchiver

# -- 2. base backups into S3 -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backup:
    """A base backup method: ``archive`` is the archive_command it needs (set, untimed, before each run);
    ``run`` takes the backup; ``stored`` is the S3 prefix its backups are stored under."""

    name: str
    archive: str
    run: Callable[[], None]
    stored: str


def s3_bytes(fs: Any, prefix: str) -> int:
    fs.invalidate_cache()
    return int(fs.du(prefix)) if fs.exists(prefix) else 0


def run_backups(
    cluster: LocalCluster, methods: Sequence[Backup], fs: Any, rounds: int
) -> dict[str, dict[str, list[float]]]:
    results: dict[str, dict[str, list[float]]] = {m.name: {"seconds": [], "bytes": []} for m in methods}
    for r in range(rounds):
        for m in rotated(methods, r):
            set_archive_command(cluster, m.archive)
            drain(cluster)  # untimed: nothing left for the previous method's archive_command
            before = s3_bytes(fs, m.stored)
            t0 = time.perf_counter()
            m.run()
            elapsed = time.perf_counter() - t0
            stored = s3_bytes(fs, m.stored) - before
            results[m.name]["seconds"].append(elapsed)
            results[m.name]["bytes"].append(stored)
            print(f"  round {r + 1}/{rounds}  {m.name:<44} {elapsed:7.2f} s  {stored / MB:8.1f} MB", flush=True)
    return results


def pgrecovery_backup(conninfo: str, repo: Repository) -> Callable[[], None]:
    """Two bundles in parallel, zstd level 1 (the defaults but for the level)."""
    backup = BaseBackup(dbname=conninfo, workers=2, compression="zstd", level=1)

    def run() -> None:
        backup.run(repo)

    return run


def pgbackrest_backup(pgbr: PgBackRest, config: str) -> Callable[[], None]:
    def run() -> None:
        pgbr.run(config, "backup", "--type=full")

    return run


def barman_backup(s3: S3, cluster: LocalCluster, server: str) -> Callable[[], None]:
    """lz4 (barman-cloud-backup has no zstd), its default 2 upload processes, an immediate checkpoint."""
    cmd = barman("backup", s3, "--lz4", "--immediate-checkpoint", "-h", cluster.host, "-p", str(cluster.port))
    cmd += ["-U", cluster.superuser, f"s3://{BUCKET}/barman", server]

    def run() -> None:
        run_pg(cmd)

    return run


def barman_latest(s3: S3, server: str) -> Callable[[], str]:
    def latest() -> str:
        out = run_pg(barman("backup-list", s3, "--format", "json", f"s3://{BUCKET}/barman", server))
        return str(json.loads(out)["backups_list"][-1]["backup_id"])

    return latest


# -- 3. restore + replay to a promoted server -----------------------------------------------------------------


@dataclass
class Recovery:
    total: list[float] = field(default_factory=list)  # start of the restore until "select 1" answers, promoted
    restore: list[float] = field(default_factory=list)  # the restore step (files down and unpacked)
    replay: list[float] = field(default_factory=list)  # server start until promoted
    wal_files: list[int] = field(default_factory=list)  # "restored log file" lines in the server's log
    phases: list[dict[str, float] | None] = field(default_factory=list)  # from the server's log: see `log_phases`

    def row(self, name: str) -> dict[str, Any]:
        med = statistics.median
        return {
            "method": name,
            "total_s": self.total,
            "total_median_s": med(self.total),
            "restore_median_s": med(self.restore),
            "replay_median_s": med(self.replay),
            "restore_s": self.restore,
            "replay_s": self.replay,
            "wal_files": self.wal_files,
            "log_phases": self.phases,
        }


Timing = tuple[float, float, float, int]  # total, restore, replay (server start to promotion), WAL files restored


def wait_promoted(cluster: LocalCluster, timeout: float = 600) -> None:
    """Until the server has left recovery and answers ``select 1``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if cluster.query("select pg_is_in_recovery()")[0][0] is False:
                assert cluster.query("select 1")[0][0] == 1
                return
        except Exception:  # noqa: BLE001 -- not answering yet (still starting)
            if not cluster.is_running():
                raise RuntimeError(f"the restored server stopped:{cluster.log_tail()}") from None
        if time.monotonic() > deadline:
            raise RuntimeError(f"not promoted within {timeout:.0f} s:{cluster.log_tail()}")
        time.sleep(0.02)


_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) UTC")


def log_phases(log: Path) -> dict[str, float] | None:
    """Seconds, from the server's log: ``to_first`` (recovery starting until the first segment is restored: the
    history probes and the first fetches), ``segments`` (first to last segment restored: replay), ``to_ready`` (last
    segment restored until the promoted server accepts connections: the end-of-archive misses, the timeline
    probes, the end-of-recovery checkpoint)."""
    stamps: dict[str, list[datetime]] = {"start": [], "restored": [], "ready": []}
    for line in log.read_text(errors="replace").splitlines():
        m = _STAMP.match(line)
        if not m:
            continue
        kind = (
            "start"
            if "starting archive recovery" in line or "starting point-in-time recovery" in line
            else "restored"
            if "restored log file" in line
            else "ready"
            if "database system is ready to accept connections" in line
            else None
        )
        if kind:
            stamps[kind].append(datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f"))
    if not (stamps["start"] and stamps["restored"] and stamps["ready"]):
        return None
    start, first, last, ready = stamps["start"][0], stamps["restored"][0], stamps["restored"][-1], stamps["ready"][-1]
    return {
        "to_first": (first - start).total_seconds(),
        "segments": (last - first).total_seconds(),
        "to_ready": (ready - last).total_seconds(),
    }


def restored_files(log: Path) -> int:
    return len(re.findall(r'restored log file "[^"]+" from archive', log.read_text(errors="replace")))


def pgrecovery_restore(repo: Repository) -> Callable[[Path], Timing]:
    def run(pgdata: Path) -> Timing:
        t0 = time.perf_counter()
        result = RecoveryPlan(repo, RecoveryTarget.latest()).run(pgdata)
        cluster = LocalCluster(data_dir=pgdata, port=result.port)
        wait_promoted(cluster)
        total = time.perf_counter() - t0
        cluster.stop(mode="immediate")
        WalArchiver(repo).wait_for_prefetch(pgdata / "pgrecovery_spool")
        # restored through restore_command, or staged in pg_wal and read there (the server's log names only the
        # former; the recovery's report counts both)
        return total, result.restore_seconds, result.recovery_seconds, result.wal_restored

    return run


def start_restored(pgdata: Path, t0: float, env: Mapping[str, str]) -> Timing:
    """Start a restored data directory, wait until it is promoted and answers; (total, restore, replay, files)."""
    restore_s = time.perf_counter() - t0
    cluster = LocalCluster(data_dir=pgdata)
    t1 = time.perf_counter()
    cluster.start(env=env, timeout=600)
    wait_promoted(cluster)
    now = time.perf_counter()
    cluster.stop(mode="immediate")
    return now - t0, restore_s, now - t1, restored_files(pgdata.with_name(pgdata.name + ".log"))


def pgbackrest_restore(pgbr: PgBackRest, config: str) -> Callable[[Path], Timing]:
    def run(pgdata: Path) -> Timing:
        t0 = time.perf_counter()
        pgbr.run(config, f"--pg1-path={pgdata}", "--archive-mode=off", "--type=default", "restore")
        return start_restored(pgdata, t0, {})

    return run


def barman_restore(s3: S3, server: str, backup_id: Callable[[], str]) -> Callable[[Path], Timing]:
    def run(pgdata: Path) -> Timing:
        backup = backup_id()  # untimed: the id the operator would read from barman-cloud-backup-list
        t0 = time.perf_counter()
        run_pg(barman("restore", s3, f"s3://{BUCKET}/barman", server, backup, str(pgdata)))
        cluster = LocalCluster(data_dir=pgdata)
        cluster.configure(restore_command=barman_wal_restore(s3, server), archive_mode="off")
        (pgdata / "recovery.signal").touch()
        shutil.chown(pgdata / "recovery.signal", *_owner(pgdata))
        return start_restored(pgdata, t0, s3.env())

    return run


def _owner(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_uid, st.st_gid


def floor_replay(repo: Repository, segments: Sequence[str]) -> Callable[[Path], Timing]:
    """pgrecovery's recovery with every segment already in pg_wal (copied there untimed): replay alone."""

    def run(pgdata: Path) -> Timing:
        replay, restore, _files, _lsn = replay_only_once(repo, pgdata, segments)
        return replay + restore, restore, replay, 0

    return run


def run_restores(methods: Mapping[str, Callable[[Path], Timing]], rounds: int) -> dict[str, Recovery]:
    """Every round runs every method once, in an order rotated by one each round; each into a new directory."""
    workdir = postgres_dir("pgrecovery-bench-peers-restore-")
    results = {name: Recovery() for name in methods}
    names = list(methods)
    try:
        for r in range(rounds):
            for i, name in enumerate(rotated(names, r)):
                pgdata = workdir / f"round{r}-{i}"
                pgdata.mkdir(mode=0o700)
                shutil.chown(pgdata, *_owner(workdir))
                try:
                    total, restore, replay, files = methods[name](pgdata)
                    phases = log_phases(pgdata.with_name(pgdata.name + ".log"))
                finally:
                    shutil.rmtree(pgdata, ignore_errors=True)
                    pgdata.with_name(pgdata.name + ".log").unlink(missing_ok=True)
                res = results[name]
                res.total.append(total)
                res.restore.append(restore)
                res.replay.append(replay)
                res.wal_files.append(files)
                res.phases.append(phases)
                where = (
                    ""
                    if phases is None
                    else f"; log: to first segment {phases['to_first']:.2f} s, segments {phases['segments']:.2f} s, "
                    f"last segment to ready {phases['to_ready']:.2f} s"
                )
                print(
                    f"  round {r + 1}/{rounds}  {name:<44} {total:7.2f} s  (restore {restore:5.2f} s, "
                    f"start to promoted {replay:5.2f} s, {files} WAL files from the archive{where})",
                    flush=True,
                )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return results
