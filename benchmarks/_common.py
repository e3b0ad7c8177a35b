"""What the benchmark scripts share: the data set, an archiving server's helpers, timed rounds in a rotating order,
the machine's description, the results table with its ratios, the quick/full option defaults, and writing the JSON
results.

Not a benchmark itself (``nox -s bench`` runs only ``bench_*.py``). The scripts import it as a sibling module.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import pwd
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pgrecovery import LocalCluster
from pgrecovery import _walnames as wn
from pgrecovery.cluster import default_run_as
from pgrecovery.pgtools import find_tool
from pgrecovery.wal.archiver import archiver_status

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DBNAME = "bench"
MB = 1e6
T = TypeVar("T")

# -- the data set -------------------------------------------------------------------------------------------------

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


def print_tables(data: dict[str, Any]) -> None:
    """The data set's tables, one line each (below a line describing the database)."""
    for t in data["tables"]:
        print(f"            {t['name']:<20} {t['rows']:>12,} rows {t['bytes'] / MB:>9,.0f} MB")


def tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# -- an archiving server -------------------------------------------------------------------------------------------

SEGMENT = 16 * 1024 * 1024
UPDATE_CHUNK = 250_000  # rows per bulk update while generating WAL


def postgres_dir(prefix: str) -> Path:
    """A new directory that the server's OS user owns (archive_command and recovery write into it as that user)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    who = default_run_as()
    if who is not None:
        pw = pwd.getpwnam(who)
        os.chown(path, pw.pw_uid, pw.pw_gid)
    return path


def ready_count(cluster: LocalCluster) -> int:
    """Files waiting for archive_command (``pg_wal/archive_status/*.ready``)."""
    return sum(1 for e in os.listdir(cluster.data_dir / "pg_wal" / "archive_status") if e.endswith(".ready"))


def current_lsn(cluster: LocalCluster) -> int:
    return wn.parse_lsn(str(cluster.query("select pg_current_wal_lsn()::text")[0][0]))


def wait_archived(cluster: LocalCluster, timeout: float = 600) -> str:
    """Switch to a new segment and wait until everything before it is archived; returns the last segment."""
    last = str(cluster.query("select pg_walfile_name(pg_switch_wal())")[0][0])
    deadline = time.monotonic() + timeout
    while True:
        status = archiver_status(cluster.conninfo())
        if (status.last_archived_wal or "") >= last and ready_count(cluster) == 0:
            return last
        if time.monotonic() > deadline:
            raise RuntimeError(f"WAL archiving did not catch up within {timeout:.0f} s: {status}")
        time.sleep(0.2)


def warm_page_cache(root: Path) -> None:
    """Read every file of the data directory once (root may), so that the first timed method is not the only one
    reading disk."""
    for path in root.rglob("*"):
        if path.is_file() and "pg_wal" not in path.parts:
            with open(path, "rb", buffering=0) as f:
                while f.read(1 << 20):
                    pass


def generate_wal(cluster: LocalCluster, segments: int, accounts: int, events: int) -> tuple[int, float]:
    """Bulk updates of both tables, chunk by chunk, until ``segments`` segments of WAL are written."""
    t0 = time.perf_counter()
    start = current_lsn(cluster)
    events_sql = (
        "update bench_events set amount = amount + 0.01, happened_at = happened_at + interval '1 s' "
        "where id between %s and %s"
    )
    tables = [("update pgbench_accounts set abalance = abalance + 1 where aid between %s and %s", accounts)]
    tables.append((events_sql, events))
    offsets = [1, 1]
    i = 0
    while current_lsn(cluster) - start < segments * SEGMENT:
        sql, rows = tables[i % 2]
        lo = offsets[i % 2]
        hi = min(rows, lo + UPDATE_CHUNK - 1)
        cluster.execute(sql, (lo, hi), dbname=DBNAME)
        offsets[i % 2] = hi + 1 if hi < rows else 1
        i += 1
    return current_lsn(cluster) - start, time.perf_counter() - t0


# -- the machine --------------------------------------------------------------------------------------------------


def machine_info(cluster: LocalCluster, tools: Iterable[str], **more: Any) -> dict[str, Any]:
    """CPUs, platform, Python, zstandard, the server's version and those of ``tools`` (PostgreSQL programs)."""
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
        **more,
        "postgresql": str(cluster.query("select version()")[0][0]),
        **{tool: find_tool(tool).version for tool in tools},
    }


def zstd_version() -> str | None:
    """The ``zstd`` program's version line (None without one on PATH)."""
    zstd = shutil.which("zstd")
    return subprocess.run([zstd, "-V"], capture_output=True, text=True).stdout.strip() if zstd else None


def print_machine(machine: dict[str, Any]) -> None:
    print(f"machine:    {machine['nproc']} CPUs ({machine['cpu']}), {machine['platform']}")
    print(f"postgresql: {machine['postgresql']}")


# -- timed rounds ---------------------------------------------------------------------------------------------------


def rotated(items: Sequence[T], round_number: int) -> list[T]:
    """``items`` in the order of a round: rotated by one each round, so that caches, background writeback and noisy
    neighbours affect every method alike."""
    shift = round_number % len(items)
    return [*items[shift:], *items[:shift]]


@dataclass(frozen=True)
class Method:
    """One way of taking a backup. ``run`` backs up (into an empty scratch directory, or a repository) and returns
    the stored bytes and, when known, the uncompressed size; ``cleanup`` (untimed) deletes what it stored."""

    name: str
    run: Callable[[Path], tuple[int, int | None]]
    target: float | None = None  # highest acceptable median time as a multiple of the baseline's
    compare_to: str | None = None  # another method whose time this one is also compared with
    cleanup: Callable[[], None] = lambda: None


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
    """Every round runs every method once, in an order rotated by one each round."""
    results = {m.name: Result(m) for m in methods}
    for r in range(rounds):
        for m in rotated(methods, r):
            scratch = workdir / f"round{r}"
            scratch.mkdir()
            try:
                t0 = time.perf_counter()
                stored, raw = m.run(scratch)
                elapsed = time.perf_counter() - t0
            finally:
                shutil.rmtree(scratch)
                m.cleanup()
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


def report_methods(results: dict[str, Result], baseline: str, short: str, *, notes: bool) -> list[dict[str, Any]]:
    """Print the methods' table (``short`` heads the ratio column; ``notes``: a column comparing a method with its
    ``compare_to``) and return its rows for the JSON results."""
    header = f"{'method':<42} {'median s':>9} {'min s':>8} {'stored MB':>10} {short:>{max(7, len(short))}}  "
    header += f"{'target':<18} note" if notes else "target"
    print(header)
    print("-" * (len(header) + (20 if notes else 0)))
    rows = []
    for res in results.values():
        m = res.method
        ratio = versus(results, res, baseline)
        passed = None if m.target is None or ratio is None else ratio <= m.target
        verdict = "" if passed is None else f"<= {m.target:.2f}x {'PASS' if passed else 'MISS'}"
        other = versus(results, res, m.compare_to) if m.compare_to else None
        ratio_text = "-" if ratio is None else f"{ratio:.2f}x"
        line = f"{m.name:<42} {res.median:9.2f} {min(res.seconds):8.2f} {res.stored_mb:10.1f} "
        line += f"{ratio_text:>{max(7, len(short))}}  "
        line += f"{verdict:<18} {'' if other is None else f'{other:.2f}x of {m.compare_to}'}" if notes else verdict
        print(line.rstrip())
        row = {
            "method": m.name,
            "seconds": res.seconds,
            "median_s": res.median,
            "min_s": min(res.seconds),
            "stored_bytes": statistics.median(res.stored),
            "raw_bytes": res.raw,
            "ratio_vs_baseline": ratio,
            "paired_ratio_vs_baseline": paired(results, res, baseline),
            "target": m.target,
            "pass": passed,
        }
        rows.append({**row, "compare_to": m.compare_to, "ratio_vs_compare_to": other} if notes else row)
    return rows


# -- options and results --------------------------------------------------------------------------------------------


def parser(doc: str | None) -> argparse.ArgumentParser:
    """A benchmark's parser, described by the first paragraph of its docstring."""
    return argparse.ArgumentParser(description=doc.split("\n\n", 1)[0] if doc else None)


def quick_or_full(args: argparse.Namespace, defaults: Iterable[tuple[str, int, int]]) -> None:
    """Fill the options left unset: (name, full run's value, ``--quick``'s value)."""
    for name, full, quick in defaults:
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)


def write_results(name: str, summary: dict[str, Any], started: float | None = None) -> Path:
    """Write ``results/NAME.json`` (with the total time since ``started``, when given) and say where."""
    if started is not None:
        summary["total_seconds"] = time.perf_counter() - started
    path = RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2) + "\n")
    if started is not None:
        print(f"\ntotal {summary['total_seconds']:.0f} s; results written to {path}")
    return path
