"""Benchmark: pgrecovery's `LogicalBackup` against plain ``pg_dump -Fc`` on the same server, in one run.

What it measures
    The wall-clock time of a complete logical backup of one database, and the bytes it leaves on disk, for:

    * ``pg_dump -Fc -f FILE`` -- PostgreSQL's default (gzip inside the archive, one core): the baseline;
    * ``pg_dump -Fc -Z0 | zstd -1 -T2 > FILE`` -- what a shell one-liner achieves (a reference point only);
    * ``LogicalBackup(compression="pg_dump")`` -- pg_dump's own compression, streamed into a repository and
      sha256-checksummed by pgrecovery: its overhead over the baseline should stay within 5 %;
    * ``LogicalBackup()`` -- pgrecovery's default: pg_dump ``-Z0`` compressed by multi-threaded zstd (level 3)
      as it streams: it should take at most half the baseline's time;
    * ``LogicalBackup(compression="zstd", level=1)``;
    * ``LogicalBackup(format="directory", jobs=2)`` and its own baseline ``pg_dump -Fd -j2 -f DIR``.

    Every round runs every method once, in an order rotated by one each round, so that caches, background
    writeback and noisy neighbours affect all methods alike; medians over the rounds are reported. pg_dump
    fsyncs its output file and pgrecovery's local repository fsyncs what it commits, so both pay for
    durability; the shell pipe does not (another reason it is only a reference point).

Why the data matters
    Compression dominates the cost of a logical backup, and how much it costs depends on the data. pgbench's
    tables alone are mostly blank ``filler`` padding that compresses about 35:1, which makes every compressor look
    free and hides the difference between them. So besides ``pgbench -i`` the database gets a table of a few
    million rows of mixed, realistically compressible values: random md5 hex strings, phrases drawn from a small
    vocabulary, timestamps, amounts and small jsonb documents.

Run ``python benchmarks/bench_logical.py`` (defaults take a few minutes on two cores) or with ``--quick`` for a
smoke test of about a minute. The results are printed and written to ``benchmarks/results/logical.json``.
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
    print_machine,
    print_tables,
    quick_or_full,
    report_methods,
    run_rounds,
    tree_size,
    write_results,
)

from pgrecovery import LocalCluster, LogicalBackup, Repository
from pgrecovery.pgtools import find_tool

BASELINE = "pg_dump -Fc"
DEFAULT_METHOD = "LogicalBackup() [zstd 3]"


# -- methods ------------------------------------------------------------------------------------------------------


def pg_dump_method(name: str, pg_dump: Path, conninfo: str, args: Sequence[str], output: str) -> Method:
    def run(scratch: Path) -> tuple[int, int | None]:
        target = scratch / output
        subprocess.run([str(pg_dump), "-d", conninfo, *args, "-f", str(target)], check=True)
        return tree_size(target), None

    return Method(name, run)


def zstd_pipe_method(pg_dump: Path, zstd: str, conninfo: str) -> Method:
    def run(scratch: Path) -> tuple[int, int | None]:
        target = scratch / "dump.pgdump.zst"
        script = (
            f"{shlex.quote(str(pg_dump))} -d {shlex.quote(conninfo)} -Fc -Z0"
            f" | {shlex.quote(zstd)} -q -1 -T2 > {shlex.quote(str(target))}"
        )
        subprocess.run(["bash", "-o", "pipefail", "-c", script], check=True)
        return target.stat().st_size, None

    return Method("pg_dump -Fc -Z0 | zstd -1 -T2", run)


def pgrecovery_method(
    name: str, backup: LogicalBackup, *, target: float | None = None, compare_to: str | None = None
) -> Method:
    def run(scratch: Path) -> tuple[int, int | None]:
        manifest = backup.run(Repository(f"file://{scratch}/repo"))
        return manifest.size, manifest.raw_size

    return Method(name, run, target=target, compare_to=compare_to)


def methods_for(conninfo: str) -> list[Method]:
    pg_dump = find_tool("pg_dump").path
    methods = [pg_dump_method(BASELINE, pg_dump, conninfo, ["-Fc"], "dump.pgdump")]
    zstd = shutil.which("zstd")
    if zstd:
        methods.append(zstd_pipe_method(pg_dump, zstd, conninfo))
    else:
        print("note: no zstd program on PATH; skipping the shell-pipe reference", file=sys.stderr)
    methods += [
        pgrecovery_method(
            'LogicalBackup(compression="pg_dump")', LogicalBackup(dbname=conninfo, compression="pg_dump"), target=1.05
        ),
        pgrecovery_method(DEFAULT_METHOD, LogicalBackup(dbname=conninfo), target=0.5),
        pgrecovery_method(
            'LogicalBackup(compression="zstd", level=1)', LogicalBackup(dbname=conninfo, compression="zstd", level=1)
        ),
        pgrecovery_method(
            'LogicalBackup(format="directory", jobs=2)',
            LogicalBackup(dbname=conninfo, format="directory", jobs=2),
            compare_to="pg_dump -Fd -j2",
        ),
        pg_dump_method("pg_dump -Fd -j2", pg_dump, conninfo, ["-Fd", "-j2"], "dump.d"),
    ]
    return methods


# -- reporting -------------------------------------------------------------------------------------------------------


def report(
    results: dict[str, Result], machine: dict[str, Any], data: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    """Print the table and return everything as a JSON-ready dict."""
    print()
    print_machine(machine)
    print(
        f"database:   {data['database_bytes'] / MB:,.0f} MB, {data['rows']:,} rows "
        f"(pgbench scale {args.scale} + {args.text_rows:,} rows of mixed text), {args.rounds} rounds"
    )
    print_tables(data)
    print()
    rows = report_methods(results, BASELINE, "vs -Fc", notes=True)
    default = results.get(DEFAULT_METHOD)
    if default is not None and default.raw:
        gzip_ratio = default.raw / statistics.median(results[BASELINE].stored)
        zstd_ratio = default.raw / statistics.median(default.stored)
        print(
            f"\nuncompressed custom-format dump (pg_dump -Z0): {default.raw / MB:,.0f} MB; "
            f"compresses {gzip_ratio:.1f}:1 with pg_dump's gzip, {zstd_ratio:.1f}:1 with zstd 3"
        )
    return {
        "finished_at": datetime.now(UTC).isoformat(),
        "arguments": {"scale": args.scale, "text_rows": args.text_rows, "rounds": args.rounds, "quick": args.quick},
        "machine": machine,
        "dataset": data,
        "methods": rows,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = parser(__doc__)
    p.add_argument("--scale", type=int, default=None, help="pgbench scale factor (default 30; --quick: 5)")
    p.add_argument(
        "--text-rows", type=int, default=None, help="rows of mixed text data (default 3,000,000; --quick: 500,000)"
    )
    p.add_argument("--rounds", type=int, default=None, help="rounds of every method (default 5; --quick: 2)")
    p.add_argument("--quick", action="store_true", help="a small data set and few rounds, for a smoke test")
    args = p.parse_args(argv)
    quick_or_full(args, (("scale", 30, 5), ("text_rows", 3_000_000, 500_000), ("rounds", 5, 2)))
    if args.scale < 1 or args.text_rows < 2 or args.rounds < 1:
        p.error("--scale and --rounds must be at least 1, --text-rows at least 2")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="pgrecovery-bench-"))
    cluster = LocalCluster.temporary(settings={"fsync": False, "shared_buffers": "256MB"})
    try:
        cluster.start()
        cluster.create_database(DBNAME)
        print(f"loading data (pgbench scale {args.scale}, {args.text_rows:,} rows of mixed text) ...")
        load_data(cluster, scale=args.scale, text_rows=args.text_rows)
        data = dataset_info(cluster)
        machine = machine_info(cluster, ["pg_dump"])
        conninfo = cluster.conninfo(DBNAME)
        # One untimed dump warms the page cache, so that the first timed method is not the only one reading disk.
        warm_up = [str(find_tool("pg_dump").path), "-d", conninfo, "-Fc", "-Z0"]
        subprocess.run(warm_up, check=True, stdout=subprocess.DEVNULL)
        print(f"timing {args.rounds} rounds ...")
        results = run_rounds(methods_for(conninfo), args.rounds, workdir)
        summary = report(results, machine, data, args)
    finally:
        cluster.destroy()
        shutil.rmtree(workdir, ignore_errors=True)
    write_results("logical", summary, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
