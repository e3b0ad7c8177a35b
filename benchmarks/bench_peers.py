"""Benchmark: pgrecovery side by side with pgBackRest and barman-cloud (issue 15), in one run, ratios printed.

What it measures
    1. WAL push. One archive_command call as PostgreSQL's archiver makes it (``/bin/sh -c`` as the server's OS
       user, in a data directory, ``%p`` = ``pg_wal/NAME``, the ``.ready`` file renamed ``.done`` after it), on
       real 16 MB segments copied under names never archived before:

       * no backlog (the segment is the only ``.ready`` file): pgrecovery's `archive_command` (local repository
         and S3), ``pgbackrest archive-push`` (local repository and S3), ``barman-cloud-wal-archive --zstd`` (S3)
         and ``cp`` (a reference);
       * a backlog of 16 ``.ready`` segments, one call per segment in order: the time per segment, also with
         pgBackRest's ``archive-async=y`` (a spool path; its forked process pushes the ready segments ahead,
         ``process-max=2``).

       Calls alternate method by method, the order rotated each run.

    1b. WAL push from a live server writing a trickle of WAL (small updates of the mixed-text rows, a segment every
       5 to 10 s, nearer a quiet primary than a busy one): its archive_command runs pgrecovery's `archive_command` and
       ``pgbackrest archive-push`` (both into local repositories) on each segment and logs how long each call took;
       the order is swapped halfway (``_peers_live.py``). Here pgrecovery's WAL worker has hashed and compressed
       most of each segment while the server wrote it.

    2. Base backup into S3, each method with its own archive_command set (untimed) before it:
       ``BaseBackup(workers=2, zstd level 1)``, ``pgbackrest backup --type=full`` (zstd level 1,
       ``process-max=2``, bundles, fast start) and ``barman-cloud-backup --lz4`` (it has no zstd; 2 upload
       processes, immediate checkpoint). Stored bytes are those that appear under each tool's backup prefix.

    3. Restore + replay to a promoted, queryable server. The server archives into every repository at once (an
       archive_command chaining the tools), each tool takes a base backup, then at least ``--segments`` segments of
       WAL are written by bulk updates and archived, and the server stops. Each round, each method restores its
       newest backup into a new directory and replays the whole archive, timed from the start of the restore
       until ``select 1`` answers on the promoted server: ``RecoveryPlan(repo, RecoveryTarget.latest()).run()``
       (its restore_command prefetches), ``pgbackrest restore`` (+ its restore_command ``pgbackrest archive-get``,
       synchronous) from the local repository and S3, and ``barman-cloud-restore`` +
       ``barman-cloud-wal-restore`` (its defaults: no parallel prefetch) from S3.

    4. pgrecovery's replay with prefetch (3., local repository: server start until promoted) against the same
       recovery with every segment already copied into pg_wal (untimed) and a restore_command that fails at once:
       replay alone.

S3 is moto's server on loopback (objects in memory) for all three tools; pgBackRest reaches it through stunnel
(pgBackRest speaks only TLS to S3; a self-signed certificate, ``repo1-storage-verify-tls=n``), the others over plain
HTTP. The data is pgbench's tables plus rows of mixed, realistically compressible text (see ``_common.py``), and the
WAL comes from updates of those rows, so both compress like real tables. The server runs with ``fsync = off`` (the
tools' own fsyncs are unaffected). Needs ``pgbackrest`` and ``stunnel4`` (apt) and barman-cloud, moto and s3fs in
this interpreter's environment: ``nox -s bench -- peers`` installs them all. About 12 minutes on two cores
(``--quick``: a smoke test of about four). Results: ``benchmarks/results/peers.json``.
"""

from __future__ import annotations

import os
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
    dataset_info,
    generate_wal,
    load_data,
    machine_info,
    parser,
    postgres_dir,
    print_machine,
    print_tables,
    quick_or_full,
    warm_page_cache,
    write_results,
)
from _peers_live import PGB as LIVE_PGB
from _peers_live import PGR as LIVE_PGR
from _peers_live import live_push
from _peers_push import BACKLOG, CP, Pusher, PushTimes, Scratch, pause, run_push
from _peers_restore import (
    Backup,
    Recovery,
    barman_backup,
    barman_latest,
    barman_restore,
    floor_replay,
    pgbackrest_backup,
    pgbackrest_restore,
    pgrecovery_backup,
    pgrecovery_restore,
    run_backups,
    run_restores,
)
from _peers_setup import (
    BUCKET,
    KEY,
    S3,
    SECRET,
    barman_version,
    barman_wal_archive,
    drain,
    missing_tools,
    pgbackrest_configs,
    pgbackrest_version,
    s3_services,
    set_archive_command,
    stanza_create,
    start_with_socket,
)
from bench_s3 import make_segments

from pgrecovery import LocalCluster, Repository, _walclient
from pgrecovery import _walnames as wn
from pgrecovery.cluster import check_runnable_by
from pgrecovery.wal.archiver import WalArchiver, archive_command

PGR_LOCAL, PGR_S3 = "pgrecovery, local", "pgrecovery, S3"
PGB_LOCAL, PGB_S3 = "pgBackRest, local", "pgBackRest, S3"
PGB_LOCAL_ASYNC, PGB_S3_ASYNC = "pgBackRest async, local", "pgBackRest async, S3"
BARMAN_S3 = "barman-cloud --zstd, S3"
FLOOR = "pgrecovery, WAL already in pg_wal (floor)"


def parse_args(argv: Sequence[str] | None = None) -> Any:
    p = parser(__doc__)
    p.add_argument("--scale", type=int, default=None, help="pgbench scale (default 10; --quick: 2)")
    p.add_argument(
        "--text-rows", type=int, default=None, help="rows of mixed text (default 2,000,000; --quick: 200,000)"
    )
    p.add_argument(
        "--push-runs", type=int, default=None, help="single archive_command calls each (default 10; --quick: 3)"
    )
    p.add_argument("--push-rounds", type=int, default=None, help="16-segment backlogs each (default 3; --quick: 1)")
    p.add_argument(
        "--live-segments",
        type=int,
        default=None,
        help="segments per order, push from a live server (default 6; --quick: 3)",
    )
    p.add_argument("--backup-rounds", type=int, default=None, help="base backups each (default 3; --quick: 1)")
    p.add_argument("--segments", type=int, default=None, help="WAL segments to replay (default 50; --quick: 8)")
    p.add_argument("--restore-rounds", type=int, default=None, help="restores each (default 3; --quick: 1)")
    p.add_argument("--quick", action="store_true", help="a small data set and one round, for a smoke test")
    args = p.parse_args(argv)
    quick_or_full(
        args,
        (
            ("scale", 10, 2),
            ("text_rows", 2_000_000, 200_000),
            ("push_runs", 10, 3),
            ("push_rounds", 3, 1),
            ("live_segments", 6, 3),
            ("backup_rounds", 3, 1),
            ("segments", 50, 8),
            ("restore_rounds", 3, 1),
        ),
    )
    return args


# -- reporting -----------------------------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a / b:.2f}x"


def verdict(value: float | None, target: float) -> str:
    return "" if value is None else f"target <= {target:.1f}x: {'pass' if value <= target else 'MISS'}"


def med(xs: Sequence[float]) -> float | None:
    return statistics.median(xs) if xs else None


def report_push(push: dict[str, PushTimes]) -> list[str]:
    print("\n1. WAL push (16 MB segments, /bin/sh -c as the server's OS user; milliseconds)")
    print(f"{'archive_command':<30} {'one call, no backlog':>22} {f'per segment, {BACKLOG} ready':>24}")
    for name, t in push.items():
        single, backlog = med(t.single), med(t.backlog)
        s = f"{single * 1e3:.0f} (min {min(t.single) * 1e3:.0f})" if single else "-"
        b = f"{backlog * 1e3:.0f}" if backlog else "-"
        print(f"{name:<30} {s:>22} {b:>24}")
    one = {n: med(t.single) for n, t in push.items()}
    per = {n: med(t.backlog) for n, t in push.items()}
    lines = [
        f"push, one call, local: pgrecovery / pgBackRest = {ratio(one[PGR_LOCAL], one[PGB_LOCAL])}  "
        + verdict(_r(one[PGR_LOCAL], one[PGB_LOCAL]), 0.6),
        f"push, one call, S3: pgrecovery / pgBackRest = {ratio(one[PGR_S3], one[PGB_S3])}  "
        + verdict(_r(one[PGR_S3], one[PGB_S3]), 1.0)
        + f"; pgrecovery / barman-cloud = {ratio(one[PGR_S3], one[BARMAN_S3])}",
        f"push, backlog, local: pgrecovery / pgBackRest async = {ratio(per[PGR_LOCAL], per[PGB_LOCAL_ASYNC])}  "
        + verdict(_r(per[PGR_LOCAL], per[PGB_LOCAL_ASYNC]), 1.0)
        + f"; / pgBackRest sync = {ratio(per[PGR_LOCAL], per[PGB_LOCAL])}",
        f"push, backlog, S3: pgrecovery / pgBackRest async = {ratio(per[PGR_S3], per[PGB_S3_ASYNC])}  "
        + verdict(_r(per[PGR_S3], per[PGB_S3_ASYNC]), 1.0)
        + f"; / pgBackRest sync = {ratio(per[PGR_S3], per[PGB_S3])}"
        + f"; / barman-cloud = {ratio(per[PGR_S3], per[BARMAN_S3])}",
    ]
    return lines


def report_live(live: dict[str, Any]) -> list[str]:
    """Both orders pooled, and each order alone: with pgrecovery's call second, its WAL worker had the length of
    pgBackRest's call to push ahead; with it first, its push is wholly on the call's path (the stricter figure)."""
    print("\n1b. WAL push from a live server writing a trickle of WAL (one call per segment; milliseconds)")
    print(f"{'archive_command':<30} {'median':>8} {'min':>6} {'median, called first':>22} {'called second':>15}")
    for name in (LIVE_PGR, LIVE_PGB):
        v = live[name]["seconds"]
        first = next((o[name]["median_s"] for o in live["orders"] if o["first"] == name), None)
        second = next((o[name]["median_s"] for o in live["orders"] if o["first"] != name), None)
        cells = [f"{x * 1e3:.0f}" if x else "-" for x in (med(v), min(v) if v else None, first, second)]
        print(f"{name:<30} {cells[0]:>8} {cells[1]:>6} {cells[2]:>22} {cells[3]:>15}")
    ours, theirs = live[LIVE_PGR]["median_s"], live[LIVE_PGB]["median_s"]
    strict = next((o for o in live["orders"] if o["first"] == LIVE_PGR), None)
    s_ours = strict[LIVE_PGR]["median_s"] if strict else None
    s_theirs = strict[LIVE_PGB]["median_s"] if strict else None
    return [
        f"push, one call, live server (trickle), local, pgrecovery called first: pgrecovery / pgBackRest = "
        f"{ratio(s_ours, s_theirs)}  " + verdict(_r(s_ours, s_theirs), 0.6) + f"; both orders = {ratio(ours, theirs)}"
    ]


def _r(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a / b


def report_backups(backups: dict[str, dict[str, list[float]]]) -> list[str]:
    print("\n2. base backup into S3")
    print(f"{'method':<44} {'median s':>9} {'min s':>8} {'stored MB':>10} {'pgrecovery / it':>16}")
    ours = statistics.median(backups[PGR_S3]["seconds"])
    for name, res in backups.items():
        secs = statistics.median(res["seconds"])
        stored = statistics.median(res["bytes"]) / MB
        print(f"{name:<44} {secs:9.2f} {min(res['seconds']):8.2f} {stored:10.1f} {ours / secs:15.2f}x")
    worst = max(ours / statistics.median(r["seconds"]) for n, r in backups.items() if n != PGR_S3)
    return [f"base backup into S3: pgrecovery / fastest peer = {worst:.2f}x  {verdict(worst, 1.0)}"]


def report_restores(res: dict[str, Recovery], segments: int) -> list[str]:
    print(
        f"\n3. restore + replay of the archive (~{segments} segments) until 'select 1' answers on the promoted server"
    )
    print(f"{'method':<44} {'total s':>8} {'min s':>7} {'restore s':>10} {'start->promoted s':>18} {'WAL files':>10}")
    for name, r in res.items():
        print(
            f"{name:<44} {statistics.median(r.total):8.2f} {min(r.total):7.2f} {statistics.median(r.restore):10.2f} "
            f"{statistics.median(r.replay):18.2f} {int(statistics.median(r.wal_files)):10d}"
        )
    print(
        "from the servers' logs (medians, s): recovery start to first segment restored / first to last / last to ready"
    )
    for name, r in res.items():
        phases = [p for p in r.phases if p]
        if phases:
            parts = [statistics.median(p[k] for p in phases) for k in ("to_first", "segments", "to_ready")]
            print(f"  {name:<42} {parts[0]:6.2f} / {parts[1]:6.2f} / {parts[2]:6.2f}")
    tot = {n: statistics.median(r.total) for n, r in res.items()}
    lines = [
        f"restore + replay, local: pgrecovery / pgBackRest = {ratio(tot[PGR_LOCAL], tot[PGB_LOCAL])}  "
        + verdict(_r(tot[PGR_LOCAL], tot[PGB_LOCAL]), 0.8),
        f"restore + replay, S3: pgrecovery / pgBackRest = {ratio(tot[PGR_S3], tot[PGB_S3])}  "
        + verdict(_r(tot[PGR_S3], tot[PGB_S3]), 0.8)
        + f"; pgrecovery / barman-cloud = {ratio(tot[PGR_S3], tot[BARMAN_S3])}",
    ]
    pairs = [a / b for a, b in zip(res[PGR_LOCAL].replay, res[FLOOR].replay, strict=True)]
    lines.append(
        f"replay with prefetch / WAL already in pg_wal = {statistics.median(pairs):.2f}x (paired by round)  "
        + verdict(statistics.median(pairs), 1.2)
    )
    return lines


# -- main ------------------------------------------------------------------------------------------------------------


def pushers(push_repo: Path, spools: Path, s3: S3, pgbr: Any) -> list[Pusher]:
    """Each pgrecovery command with a spool of its own, as two servers archiving into two repositories would have
    (one spool's worker serves one repository: a call for another one would push in-process, cold)."""
    settle = pause(1.0)  # background work of one method (pushes ahead, async processes) ends before the next
    local = archive_command(f"file://{push_repo}", spool_dir=str(spools / "push-local"))
    remote = archive_command(f"s3://{BUCKET}/push", spool_dir=str(spools / "push-s3"))
    return [
        Pusher(CP, "cp %p {copies}/%f", backlog=False),
        Pusher(PGR_LOCAL, local, settle, own_dir=True),
        Pusher(PGB_LOCAL, pgbr.archive_command("local"), settle),
        Pusher(PGB_LOCAL_ASYNC, pgbr.archive_command("local-async"), settle, single=False),
        Pusher(PGR_S3, remote, settle, own_dir=True),
        Pusher(PGB_S3, pgbr.archive_command("s3"), settle),
        Pusher(PGB_S3_ASYNC, pgbr.archive_command("s3-async"), settle, single=False),
        Pusher(BARMAN_S3, barman_wal_archive(s3, "push"), settle),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    missing = missing_tools()
    if missing:
        print(f"bench_peers: skipped, missing {', '.join(missing)} (nox -s bench -- peers installs them)")
        return 0
    started = time.perf_counter()
    check_runnable_by()
    workdir = Path(tempfile.mkdtemp(prefix="pgrecovery-bench-peers-"))
    dirs = [postgres_dir(f"pgrecovery-bench-peers-{n}-") for n in ("sock", "repo", "pushrepo", "spool")]
    socket_dir, repo_dir, push_repo, spools = dirs
    summary: dict[str, Any] = {}
    cleanup: list[Path] = []
    try:
        with s3_services(workdir) as s3:
            os.environ.update(s3.env())
            options = {"endpoint_url": s3.endpoint, "key": KEY, "secret": SECRET}
            import fsspec

            fs = fsspec.filesystem("s3", **options)
            settings = {
                "fsync": False,
                "shared_buffers": "256MB",
                "wal_level": "replica",
                "archive_mode": "on",
                "archive_command": "true",  # while loading; the benchmark sets each method's
                "archive_timeout": 0,
                "max_wal_size": "4GB",
            }
            cluster = LocalCluster.temporary(settings=settings)
            try:
                start_with_socket(cluster, socket_dir, s3.env())
                cluster.create_database(DBNAME)
                print(f"loading data (pgbench scale {args.scale}, {args.text_rows:,} rows of mixed text) ...")
                load_data(cluster, scale=args.scale, text_rows=args.text_rows)
                data = dataset_info(cluster)
                segments = make_segments(cluster, BACKLOG, workdir / "segments")
                machine = machine_info(
                    cluster, [], pgbackrest=pgbackrest_version(), barman_cloud=barman_version(), commit=_commit()
                )
                scratch = Scratch(segments, cluster.data_dir)
                cleanup.append(scratch.root)
                push_pgbr = pgbackrest_configs("push", cluster, socket_dir, s3, pg_path=scratch.data)
                pgbr = pgbackrest_configs("bench", cluster, socket_dir, s3)
                cleanup += [push_pgbr.home, pgbr.home]
                stanza_create(push_pgbr, cluster)
                stanza_create(pgbr, cluster)
                warm_page_cache(cluster.data_dir)

                print(f"1. WAL push: {args.push_runs} single calls each, then {args.push_rounds} backlogs each ...")
                push = run_push(
                    pushers(push_repo, spools, s3, push_pgbr), scratch, s3.env(), args.push_runs, args.push_rounds
                )

                print(
                    f"1b. WAL push from the live server, a trickle of WAL, {args.live_segments} segments each way ..."
                )
                live_repo, live_dir = (postgres_dir(f"pgrecovery-bench-peers-live{n}-") for n in ("repo", "calls"))
                cleanup += [live_repo, live_dir]
                live = live_push(
                    cluster, pgbr, f"file://{live_repo}", str(spools / "live"), live_dir, args.live_segments
                )
                drain(cluster)
                # its WAL worker would otherwise stay while the server runs, following the WAL of parts 2 and 3
                _walclient.stop(str(spools / "live"))

                print(f"2. base backups into S3, {args.backup_rounds} rounds ...")
                conninfo = cluster.conninfo(DBNAME)
                s3_url = f"s3://{BUCKET}/pgrecovery"
                repo_s3 = Repository(s3_url, **options)
                backups = run_backups(
                    cluster,
                    [
                        Backup(
                            PGR_S3,
                            archive_command(s3_url),
                            pgrecovery_backup(conninfo, repo_s3),
                            f"{BUCKET}/pgrecovery/backups",
                        ),
                        Backup(
                            PGB_S3,
                            pgbr.archive_command("s3"),
                            pgbackrest_backup(pgbr, "s3"),
                            f"{BUCKET}/pgbackrest-bench/backup",
                        ),
                        Backup(
                            BARMAN_S3.replace("--zstd", "--lz4"),
                            barman_wal_archive(s3, "bench"),
                            barman_backup(s3, cluster, "bench"),
                            f"{BUCKET}/barman/bench/base",
                        ),
                    ],
                    fs,
                    args.backup_rounds,
                )

                print(f"3. restore + replay: every tool's base backup, then {args.segments} segments of WAL ...")
                repo_local = Repository(f"file://{repo_dir}")
                # untimed, and the plain form: PostgreSQL 15 cuts an expanded archive_command at 1,024 bytes, which
                # the fast forms' shell parts would pass in a chain of four tools
                chain = [
                    archive_command(repo_local.url, spool_dir=str(spools / "local"), fast=False),
                    archive_command(s3_url, spool_dir=str(spools / "s3"), fast=False),
                    pgbr.archive_command("both"),
                    barman_wal_archive(s3, "bench"),
                ]
                set_archive_command(cluster, " && ".join(chain))
                drain(cluster)
                pgrecovery_backup(conninfo, repo_local)()
                pgbackrest_backup(pgbr, "local")()
                pgrecovery_backup(conninfo, repo_s3)()
                pgbackrest_backup(pgbr, "s3")()
                barman_backup(s3, cluster, "bench")()
                accounts = int(cluster.query("select count(*) from pgbench_accounts", dbname=DBNAME)[0][0])
                events = int(cluster.query("select max(id) from bench_events", dbname=DBNAME)[0][0])
                wal_bytes, wal_s = generate_wal(cluster, args.segments, accounts, events)
                t0 = time.perf_counter()
                drain(cluster)
                lag = time.perf_counter() - t0
                print(f"  {wal_bytes / MB:,.0f} MB of WAL in {wal_s:.1f} s, archived by every tool {lag:.1f} s later")
            finally:
                cluster.destroy()
            base = repo_local.get("latest", "base")
            assert base.physical is not None
            replay = [
                n
                for n in WalArchiver(repo_local).list_archived().get(1, [])
                if wn.is_segment(n) and n >= base.physical.start_wal
            ]
            print(f"  {len(replay)} segments from {replay[0]} to {replay[-1]}; {args.restore_rounds} rounds ...")
            restores = run_restores(
                {
                    PGR_LOCAL: pgrecovery_restore(repo_local),
                    PGB_LOCAL: pgbackrest_restore(pgbr, "local"),
                    PGR_S3: pgrecovery_restore(repo_s3),
                    PGB_S3: pgbackrest_restore(pgbr, "s3"),
                    BARMAN_S3: barman_restore(s3, "bench", barman_latest(s3, "bench")),
                    FLOOR: floor_replay(repo_local, replay),
                },
                args.restore_rounds,
            )
        print()
        print_machine(machine)
        print(f"tools:      {machine['pgbackrest']}; {machine['barman_cloud']}; pgrecovery at {machine['commit']}")
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        machine["load_average_at_end"] = load  # other jobs on the machine make every method slower, not alike
        print(f"load:       {load} (1, 5, 15 min) at the end")
        print(f"database:   {data['database_bytes'] / MB:,.0f} MB")
        print_tables(data)
        lines = report_push(push)
        lines += report_live(live)
        lines += report_backups(backups)
        lines += report_restores(restores, len(replay))
        print("\nagainst issue 15's targets:")
        for line in lines:
            print(f"  {line}")
        summary = {
            "finished_at": datetime.now(UTC).isoformat(),
            "arguments": dict(vars(args)),
            "machine": machine,
            "dataset": data,
            "wal_push": [t.row() for t in push.values()],
            "wal_push_live": live,
            "base_backup": backups,
            "restore": {
                "segments": len(replay),
                "wal_bytes": wal_bytes,
                "methods": [r.row(n) for n, r in restores.items()],
            },
            "targets": lines,
        }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        for d in [*dirs, *cleanup]:
            shutil.rmtree(d, ignore_errors=True)
    write_results("peers", summary, started)
    return 0


def _commit() -> str:
    """The commit of the code measured (and whether the work tree had changes)."""
    here = Path(__file__).resolve().parent

    def run(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True).stdout.strip()

    head = run("log", "--oneline", "-1")
    dirty = run("status", "--porcelain", "--", "../pgrecovery")
    return head + (" (+ uncommitted changes in pgrecovery/)" if dirty else "")


if __name__ == "__main__":
    sys.exit(main())
