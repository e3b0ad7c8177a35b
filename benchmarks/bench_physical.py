"""Benchmark: pgrecovery's physical backups, WAL archiving and recovery against PostgreSQL's own tools, in one run.

What it measures
    1. Base backup. The wall-clock time of a complete base backup of one running, archiving server, and the bytes
       it leaves on disk, for:

       * ``pg_basebackup -D DIR -Ft --compress=client-zstd:1 -X none --checkpoint=fast`` -- the baseline: the
         server's walsender reads the files, pg_basebackup compresses them on one core and fsyncs the result;
       * ``tar -cf - -C PGDATA . | zstd -1 -T2 > FILE`` -- what a shell one-liner achieves (a reference point only:
         no checkpoint, no backup mode, no fsync, not restorable without more work);
       * ``BaseBackup(workers=2, compression="zstd", level=1)`` -- pgrecovery's local method (``pg_backup_start``,
         two threads each reading, sha256-checksumming and compressing a tar bundle into the repository that
         archive_command fills, which fsyncs what it commits, then ``pg_backup_stop``): it should take at most the
         baseline's time;
       * backup mode entered and left with no file copied (a reference point: the fixed cost of the fast checkpoint
         and of ``pg_backup_stop`` waiting, as pg_basebackup's does, for the server's archiver, which it polls
         once a second).

       Both real methods start with a fast checkpoint and end once the backup's last WAL segment is archived
       (``-X none`` leaves the WAL to archive_command; ``BaseBackup`` waits for it in its repository). Every round
       runs every method once, in an order rotated by one each round, so that caches, background writeback and
       noisy neighbours affect all methods alike; medians over the rounds are reported, and each result is deleted
       (untimed) after it is timed.

    2. WAL push, per call. The time PostgreSQL waits for one archive_command call on a 16 MB segment, each run
       through ``/bin/sh -c`` as the server runs it (median over many runs, the methods alternating):

       * ``cp %p DIR/%f`` -- the baseline (not durable: the copy stays in the page cache) and ``cp`` + ``sync``;
       * the command `archive_command` generates, when the spool answers it (an earlier call archived the segment
         ahead: Python's bare start-up and a stat), and the plainer ``python -m pgrecovery wal-push`` form;
       * the generated command when it has to upload a new segment (start-up, imports, sha256, zstd level 1 and a
         durable write into a local repository).

       Then a sustained write load (``pgbench -N -c 4``) against the server archiving with `archive_command`:
       the ``.ready`` backlog in ``pg_wal/archive_status`` is sampled every second. It must not grow: bursts (WAL
       after a checkpoint, archive-ahead batches) are expected, but the archiver must catch up (at most one file
       waiting) at least once in every 15 seconds.

    3. Recovery with and without prefetch. A base backup, then at least 100 segments of WAL from bulk updates of
       both tables; each round restores the backup and replays all of it (``RecoveryTarget.latest()``) with:

       * the default restore_command (a detached process downloads the next 8 segments ahead into the spool,
         and the command hands the next one over by rename);
       * ``restore_command(url, prefetch=False)`` (each call starts the full CLI, lists the archive, downloads,
         decompresses, verifies and fsyncs its segment while replay waits);
       * every segment copied into ``pg_wal`` beforehand (untimed) and a restore_command that fails at once: the
         time replay alone takes, the floor any restore_command can approach (a reference point).

       The order rotates by one each round. Reported: the recovery time (server start until promotion) and,
       apart, the time to restore the base backup's files.

Why the data matters
    Compression dominates the cost of a base backup, and how much it costs depends on the data. pgbench's tables
    alone are mostly blank ``filler`` padding that compresses about 35:1, which makes every compressor look free
    and hides the difference between them. So besides ``pgbench -i`` the database gets the same table as
    ``bench_logical.py``: a few million rows of mixed, realistically compressible values (random md5 hex strings,
    phrases drawn from a small vocabulary, timestamps, amounts and small jsonb documents). The WAL that the
    archive and recovery parts move comes from updates of those rows, so it compresses like real WAL too.

The server runs with ``fsync = off`` (so that loading is quick; the tools' own fsyncs are unaffected) and
otherwise default WAL settings (``max_wal_size`` 1 GB, ``wal_compression`` off). Run
``python benchmarks/bench_physical.py`` (defaults take about six minutes on two cores) or with ``--quick`` for a
smoke test of about a minute. The results are printed and written to ``benchmarks/results/physical.json``.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import (
    DBNAME,
    MB,
    Method,
    Result,
    dataset_info,
    load_data,
    machine_info,
    parser,
    postgres_dir,
    print_machine,
    print_tables,
    quick_or_full,
    report_methods,
    run_rounds,
    tree_size,
    wait_archived,
    warm_page_cache,
    write_results,
    zstd_version,
)
from _physical_push import push_calls, report_push, report_sustained, run_push_rounds, sustained_load
from _physical_recovery import prepare_replay, report_recovery, run_recovery_rounds

from pgrecovery import BaseBackup, LocalCluster, Repository
from pgrecovery import _walnames as wn
from pgrecovery.cluster import check_runnable_by
from pgrecovery.pgtools import find_tool
from pgrecovery.wal.archiver import WalArchiver, archive_command

BASELINE = "pg_basebackup -Ft client-zstd:1"
DEFAULT_METHOD = "BaseBackup(workers=2, zstd level 1)"


# -- 1. base backups ----------------------------------------------------------------------------------------------


def pg_basebackup_method(conninfo: str) -> Method:
    tool = find_tool("pg_basebackup").path

    def run(scratch: Path) -> tuple[int, int | None]:
        target = scratch / "pg_basebackup"
        cmd = [str(tool), "-d", conninfo, "--no-password", "-D", str(target), "-Ft", "--compress=client-zstd:1"]
        subprocess.run([*cmd, "-X", "none", "--checkpoint=fast"], check=True, capture_output=True)
        return tree_size(target), None

    return Method(BASELINE, run)


def tar_zstd_method(pgdata: Path, zstd: str) -> Method:
    def run(scratch: Path) -> tuple[int, int | None]:
        target = scratch / "pgdata.tar.zst"
        # GNU tar exits 1 when a file changed while it read it (the server is running): that is not a failure here.
        script = (
            f"tar -cf - -C {shlex.quote(str(pgdata))} --exclude=./pg_wal/* . | {shlex.quote(zstd)} -q -1 -T2"
            f" > {shlex.quote(str(target))}; s=(${{PIPESTATUS[@]}}); [ ${{s[0]}} -le 1 ] && [ ${{s[1]}} -eq 0 ]"
        )
        subprocess.run(["bash", "-c", script], check=True)
        return target.stat().st_size, None

    return Method("tar | zstd -1 -T2 (reference)", run)


def base_backup_method(conninfo: str, repo: Repository) -> Method:
    """Into the repository that archive_command fills (BaseBackup waits for its last WAL file to arrive there);
    the backup is deleted after it is timed."""
    backup = BaseBackup(dbname=conninfo, workers=2, compression="zstd", level=1)
    taken: list[str] = []

    def run(scratch: Path) -> tuple[int, int | None]:
        manifest = backup.run(repo)
        taken.append(manifest.id)
        return manifest.size, manifest.raw_size

    def cleanup() -> None:
        while taken:
            repo.delete_backup(taken.pop())

    return Method(DEFAULT_METHOD, run, target=1.0, cleanup=cleanup)


def start_stop_method(conninfo: str) -> Method:
    """Backup mode entered and left with no file copied: the fixed cost that pg_basebackup pays too (the fast
    checkpoint, and pg_backup_stop waiting for the last segment to be archived, polling once a second)."""

    def run(scratch: Path) -> tuple[int, int | None]:
        import psycopg

        with psycopg.connect(conninfo, autocommit=True) as conn:
            new = conn.info.server_version >= 150000
            conn.execute(
                "select pg_backup_start('bench', true)" if new else "select pg_start_backup('bench', true, false)"
            )
            conn.execute("select * from pg_backup_stop(true)" if new else "select * from pg_stop_backup(false, true)")
        return 0, None

    return Method("backup start + stop only (reference)", run)


def base_backup_methods(cluster: LocalCluster, conninfo: str, repo: Repository) -> list[Method]:
    methods = [pg_basebackup_method(conninfo), start_stop_method(conninfo)]
    zstd = shutil.which("zstd")
    if zstd:
        methods.append(tar_zstd_method(cluster.data_dir, zstd))
    else:
        print("note: no zstd program on PATH; skipping the tar | zstd reference", file=sys.stderr)
    methods.append(base_backup_method(conninfo, repo))
    return methods


# -- reporting ----------------------------------------------------------------------------------------


def report_base_backups(results: dict[str, Result], data: dict[str, Any], args: argparse.Namespace) -> list[Any]:
    print(
        f"\n1. base backup -- database {data['database_bytes'] / MB:,.0f} MB, {data['rows']:,} rows "
        f"(pgbench scale {args.scale} + {args.text_rows:,} rows of mixed text), {args.rounds} rounds"
    )
    print_tables(data)
    rows = report_methods(results, BASELINE, "vs pg_bb", notes=False)
    default = results.get(DEFAULT_METHOD)
    if default is not None and default.raw:
        print(
            f"data files backed up: {default.raw / MB:,.0f} MB (tar); compress "
            f"{default.raw / statistics.median(default.stored):.1f}:1 with zstd 1"
        )
    return rows


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = parser(__doc__)
    p.add_argument("--scale", type=int, default=None, help="pgbench scale factor (default 30; --quick: 5)")
    p.add_argument(
        "--text-rows", type=int, default=None, help="rows of mixed text data (default 3,000,000; --quick: 500,000)"
    )
    p.add_argument(
        "--rounds", type=int, default=None, help="rounds of every base backup method (default 5; --quick: 2)"
    )
    p.add_argument(
        "--push-runs", type=int, default=None, help="runs of every archive_command (default 30; --quick: 10)"
    )
    p.add_argument("--load-seconds", type=int, default=None, help="sustained pgbench load (default 60; --quick: 15)")
    p.add_argument("--segments", type=int, default=None, help="WAL segments to replay (default 100; --quick: 20)")
    p.add_argument("--recovery-rounds", type=int, default=None, help="recoveries of each kind (default 3; --quick: 1)")
    p.add_argument("--quick", action="store_true", help="a small data set and few rounds, for a smoke test")
    args = p.parse_args(argv)
    quick_or_full(
        args,
        (
            ("scale", 30, 5),
            ("text_rows", 3_000_000, 500_000),
            ("rounds", 5, 2),
            ("push_runs", 30, 10),
            ("load_seconds", 60, 15),
            ("segments", 100, 20),
            ("recovery_rounds", 3, 1),
        ),
    )
    if min(args.scale, args.rounds, args.push_runs, args.load_seconds, args.segments, args.recovery_rounds) < 1:
        p.error("every count must be at least 1")
    if args.text_rows < 2:
        p.error("--text-rows must be at least 2")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    check_runnable_by()  # archive_command and restore_command run this interpreter as the server's OS user
    repo_dir = postgres_dir("pgrecovery-bench-repo-")
    repo = Repository(f"file://{repo_dir}")
    workdir = Path(tempfile.mkdtemp(prefix="pgrecovery-bench-"))
    settings = {
        "fsync": False,
        "shared_buffers": "256MB",
        "wal_level": "replica",
        "archive_mode": "on",
        "archive_command": archive_command(repo.url),
        "archive_timeout": 0,
    }
    cluster = LocalCluster.temporary(settings=settings)
    summary: dict[str, Any] = {}
    try:
        cluster.start()
        cluster.create_database(DBNAME)
        print(f"loading data (pgbench scale {args.scale}, {args.text_rows:,} rows of mixed text) ...")
        load_data(cluster, scale=args.scale, text_rows=args.text_rows)
        t0 = time.perf_counter()
        wait_archived(cluster)
        print(f"  archive caught up: {time.perf_counter() - t0:.1f} s")
        data = dataset_info(cluster)
        machine = machine_info(cluster, ["pg_basebackup"], zstd=zstd_version())
        conninfo = cluster.conninfo(DBNAME)
        warm_page_cache(cluster.data_dir)

        print(f"1. base backups, {args.rounds} rounds ...")
        backups = run_rounds(base_backup_methods(cluster, conninfo, repo), args.rounds, workdir)

        print(f"2. archive_command, {args.push_runs} runs of each ...")
        archived = [n for n in WalArchiver(repo).list_archived().get(1, []) if wn.is_segment(n)]
        segment = workdir / "segment"  # a real segment, written while the data was loaded
        WalArchiver(repo).fetch(archived[len(archived) // 2], segment, prefetch=False)
        calls, cwd = push_calls(workdir / "push", segment)
        pushes = run_push_rounds(calls, args.push_runs, cwd)
        print(f"   sustained load: pgbench -N -c 4 for {args.load_seconds} s ...")
        load = sustained_load(cluster, args.load_seconds)

        print("3. recovery: base backup, then WAL ...")
        base, replay, wal_bytes = prepare_replay(cluster, repo, conninfo, args.segments)
        print(f"   {args.recovery_rounds} rounds ...")
        recoveries = run_recovery_rounds(repo, args.recovery_rounds, replay)

        print()
        print_machine(machine)
        backup_rows = report_base_backups(backups, data, args)
        push_rows = report_push(pushes, args.push_runs)
        report_sustained(load)
        info = {"segments": len(replay), "wal_bytes": wal_bytes, "rounds": args.recovery_rounds}
        recovery_rows = report_recovery(recoveries, info)
        summary = {
            "finished_at": datetime.now(UTC).isoformat(),
            "arguments": dict(vars(args)),
            "machine": machine,
            "dataset": data,
            "base_backup": backup_rows,
            "wal_push": push_rows,
            "sustained_load": load,
            "recovery": {
                "segments": replay,
                "wal_bytes": wal_bytes,
                "base_backup": {"id": base.id, "size": base.size, "raw_size": base.raw_size},
                "methods": recovery_rows,
            },
        }
    finally:
        cluster.destroy()
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(repo_dir, ignore_errors=True)
    write_results("physical", summary, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
