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
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pgrecovery import LocalCluster, LogicalBackup, Repository
from pgrecovery.pgtools import find_tool

RESULTS_FILE = Path(__file__).resolve().parent / "results" / "logical.json"
DBNAME = "bench"
BASELINE = "pg_dump -Fc"
DEFAULT_METHOD = "LogicalBackup() [zstd 3]"
MB = 1e6

# Phrases in bench_events.words are drawn from these (a space-separated list).
VOCABULARY = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa quebec "
    "romeo sierra tango uniform victor whiskey xray yankee zulu order invoice payment refund customer supplier "
    "warehouse shipment pending delivered cancelled express standard priority north south east west"
)

EVENTS_TABLE_SQL = """
create table bench_events (
    id          bigint not null,
    hex         text not null,
    words       text not null,
    happened_at timestamptz not null,
    amount      numeric(12, 2) not null,
    attrs       jsonb not null
)
"""

# One row per id in [lo, hi] (parameters: lo, hi, vocabulary). The subquery depends on g, so it runs for every row
# and picks 3 to 7 words.
EVENTS_INSERT_SQL = """
insert into bench_events
select g,
       md5(random()::text),
       (select string_agg(pick.word, ' ')
          from (select v.w[1 + floor(random() * array_length(v.w, 1))::int] as word
                  from generate_series(1, 3 + mod(g, 5))) as pick),
       timestamptz '2024-01-01 00:00:00+00' + random() * interval '365 days',
       round((random() * 10000)::numeric, 2),
       jsonb_build_object(
           'status', (array['new', 'paid', 'shipped', 'returned'])[1 + mod(g, 4)],
           'qty', 1 + floor(random() * 20)::int,
           'region', v.w[1 + mod(g, array_length(v.w, 1))],
           'flags', jsonb_build_array(random() < 0.5, mod(g, 7) = 0))
  from generate_series(%s::bigint, %s::bigint) as g,
       (select %s::text[] as w) as v
"""


# -- methods ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """One way of taking the backup. ``run`` dumps into an empty scratch directory and returns the stored bytes
    and, when known, the uncompressed size of the dump."""

    name: str
    run: Callable[[Path], tuple[int, int | None]]
    target: float | None = None  # highest acceptable median time as a multiple of the baseline's
    compare_to: str | None = None  # another method whose time this one is also compared with


def tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


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


# -- the data set ---------------------------------------------------------------------------------------------------


def load_data(cluster: LocalCluster, *, scale: int, text_rows: int) -> None:
    """pgbench tables at ``scale`` plus ``text_rows`` rows of compressible mixed data in ``bench_events``."""
    pgbench = find_tool("pgbench").path
    t0 = time.perf_counter()
    connection = ["-h", cluster.host, "-p", str(cluster.port), "-U", cluster.superuser, DBNAME]
    subprocess.run([str(pgbench), "-i", "-s", str(scale), "-q", *connection], check=True, capture_output=True)
    print(f"  pgbench -i -s {scale}: {time.perf_counter() - t0:.1f} s")

    t0 = time.perf_counter()
    cluster.execute(EVENTS_TABLE_SQL, dbname=DBNAME)
    # Two sessions in parallel, each inserting half of the ids.
    halves = [(1, text_rows // 2), (text_rows // 2 + 1, text_rows)]
    with ThreadPoolExecutor(max_workers=len(halves)) as pool:
        jobs = [
            pool.submit(cluster.execute, EVENTS_INSERT_SQL, (lo, hi, VOCABULARY.split()), dbname=DBNAME)
            for lo, hi in halves
        ]
        for job in jobs:
            job.result()
    cluster.execute("alter table bench_events add primary key (id)", dbname=DBNAME)
    # Freeze and set hint bits now, so that the first timed dump does not pay for it; then a clean checkpoint.
    cluster.execute("vacuum (freeze, analyze) bench_events", dbname=DBNAME)
    cluster.execute("checkpoint")
    print(f"  bench_events ({text_rows:,} rows): {time.perf_counter() - t0:.1f} s")


def dataset_info(cluster: LocalCluster) -> dict[str, Any]:
    """The database's size and, per table, the exact row count and size on disk."""
    import psycopg
    from psycopg import sql

    def count(conn: psycopg.Connection[tuple[Any, ...]], query: str | sql.Composed) -> int:
        row = conn.execute(query).fetchone()
        assert row is not None
        return int(row[0])

    with cluster.connect(DBNAME) as conn:
        size = count(conn, "select pg_database_size(current_database())")
        tables = conn.execute(
            "select c.relname, pg_total_relation_size(c.oid) from pg_class c "
            "join pg_namespace n on n.oid = c.relnamespace where n.nspname = 'public' and c.relkind = 'r' "
            "order by 2 desc"
        ).fetchall()
        details = [
            {
                "name": name,
                "rows": count(conn, sql.SQL("select count(*) from public.{}").format(sql.Identifier(name))),
                "bytes": int(nbytes),
            }
            for name, nbytes in tables
        ]
    return {"database_bytes": size, "tables": details, "rows": sum(t["rows"] for t in details)}


def machine_info(cluster: LocalCluster) -> dict[str, Any]:
    import zstandard

    cpuinfo = Path("/proc/cpuinfo")
    models = [ln for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")] if cpuinfo.exists() else []
    cpu = models[0].split(":", 1)[1].strip() if models else platform.processor()
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": cpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "zstandard": zstandard.__version__,
        "postgresql": str(cluster.query("select version()")[0][0]),
        "pg_dump": find_tool("pg_dump").version,
    }


# -- running and reporting -------------------------------------------------------------------------------------------


@dataclass
class Result:
    method: Method
    seconds: list[float] = field(default_factory=list)
    stored: list[int] = field(default_factory=list)
    raw: int | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def stored_mb(self) -> float:
        return statistics.median(self.stored) / MB


def run_rounds(methods: Sequence[Method], rounds: int, workdir: Path) -> dict[str, Result]:
    results = {m.name: Result(m) for m in methods}
    for r in range(rounds):
        shift = r % len(methods)
        order = [*methods[shift:], *methods[:shift]]
        for m in order:
            scratch = workdir / f"round{r}"
            scratch.mkdir()
            try:
                t0 = time.perf_counter()
                stored, raw = m.run(scratch)
                elapsed = time.perf_counter() - t0
            finally:
                shutil.rmtree(scratch)
            res = results[m.name]
            res.seconds.append(elapsed)
            res.stored.append(stored)
            res.raw = raw if raw is not None else res.raw
            print(f"  round {r + 1}/{rounds}  {m.name:<42} {elapsed:7.2f} s  {stored / MB:8.1f} MB", flush=True)
    return results


def versus(results: dict[str, Result], res: Result, other: str) -> float | None:
    """The median time of ``res`` as a multiple of that of ``other`` (None if ``other`` did not run)."""
    ref = results.get(other)
    return res.median / ref.median if ref else None


def paired(results: dict[str, Result], res: Result, other: str) -> float | None:
    """The median over rounds of the time of ``res`` divided by that of ``other`` in the same round (less
    sensitive than `versus` to slow drifts in the machine's speed)."""
    ref = results.get(other)
    return statistics.median(a / b for a, b in zip(res.seconds, ref.seconds, strict=True)) if ref else None


def report(
    results: dict[str, Result], machine: dict[str, Any], data: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    """Print the table and return everything as a JSON-ready dict."""
    print()
    print(f"machine:    {machine['nproc']} CPUs ({machine['cpu']}), {machine['platform']}")
    print(f"postgresql: {machine['postgresql']}")
    print(
        f"database:   {data['database_bytes'] / MB:,.0f} MB, {data['rows']:,} rows "
        f"(pgbench scale {args.scale} + {args.text_rows:,} rows of mixed text), {args.rounds} rounds"
    )
    for t in data["tables"]:
        print(f"            {t['name']:<20} {t['rows']:>12,} rows {t['bytes'] / MB:>9,.0f} MB")
    print()
    header = f"{'method':<42} {'median s':>9} {'min s':>8} {'stored MB':>10} {'vs -Fc':>7}  {'target':<18} note"
    print(header)
    print("-" * (len(header) + 20))
    rows = []
    for res in results.values():
        m = res.method
        ratio = versus(results, res, BASELINE)
        passed = None if m.target is None or ratio is None else ratio <= m.target
        verdict = "" if passed is None else f"<= {m.target:.2f}x {'PASS' if passed else 'MISS'}"
        other = versus(results, res, m.compare_to) if m.compare_to else None
        note = "" if other is None else f"{other:.2f}x of {m.compare_to}"
        ratio_text = "-" if ratio is None else f"{ratio:.2f}x"
        print(
            f"{m.name:<42} {res.median:9.2f} {min(res.seconds):8.2f} {res.stored_mb:10.1f} {ratio_text:>7}  "
            f"{verdict:<18} {note}".rstrip()
        )
        rows.append(
            {
                "method": m.name,
                "seconds": res.seconds,
                "median_s": res.median,
                "min_s": min(res.seconds),
                "stored_bytes": statistics.median(res.stored),
                "raw_bytes": res.raw,
                "ratio_vs_baseline": ratio,
                "paired_ratio_vs_baseline": paired(results, res, BASELINE),
                "target": m.target,
                "pass": passed,
                "compare_to": m.compare_to,
                "ratio_vs_compare_to": other,
            }
        )
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
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    p.add_argument("--scale", type=int, default=None, help="pgbench scale factor (default 30; --quick: 5)")
    p.add_argument(
        "--text-rows", type=int, default=None, help="rows of mixed text data (default 3,000,000; --quick: 500,000)"
    )
    p.add_argument("--rounds", type=int, default=None, help="rounds of every method (default 5; --quick: 2)")
    p.add_argument("--quick", action="store_true", help="a small data set and few rounds, for a smoke test")
    args = p.parse_args(argv)
    for name, full, quick in (("scale", 30, 5), ("text_rows", 3_000_000, 500_000), ("rounds", 5, 2)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
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
        machine = machine_info(cluster)
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
    summary["total_seconds"] = time.perf_counter() - started
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\ntotal {summary['total_seconds']:.0f} s; results written to {RESULTS_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
