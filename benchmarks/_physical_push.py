"""Part 2 of ``bench_physical.py``: the time of one archive_command call, and a sustained write load against a
server archiving with `archive_command` (see that script's docstring)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import DBNAME, MB, SEGMENT, current_lsn, ready_count, rotated

from pgrecovery import LocalCluster
from pgrecovery import _walnames as wn
from pgrecovery.pgtools import find_tool
from pgrecovery.wal.archiver import archive_command, archiver_status

PUSH_BASELINE = "cp %p DIR/%f"
WINDOW = 15  # seconds: the sustained load's backlog must drain at least once in each window


@dataclass(frozen=True)
class PushCall:
    """One archive_command. ``prepare(i)`` (untimed) returns the command line of run ``i``, %p and %f expanded;
    ``cleanup(i)`` (untimed) removes what the run left."""

    name: str
    prepare: Callable[[int], str]
    cleanup: Callable[[int], None] = lambda i: None


@dataclass
class PushTiming:
    call: PushCall
    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def expand(command: str, path: str) -> str:
    """PostgreSQL's placeholder substitution: %p the path, %f the file name, %% a percent sign."""
    names = {"p": path, "f": os.path.basename(path), "%": "%"}
    return re.sub(r"%([pf%])", lambda m: names[m.group(1)], command)


def push_calls(scratch: Path, segment: Path) -> tuple[list[PushCall], Path]:
    """The archive_commands to time, and the data directory they run in (a copy of one real segment in pg_wal)."""
    data = scratch / "data"
    pg_wal = data / "pg_wal"
    (pg_wal / "archive_status").mkdir(parents=True)
    hit = wn.segment_name(1, 0x100)
    shutil.copyfile(segment, pg_wal / hit)
    copies = scratch / "copies"
    copies.mkdir()
    url = f"file://{scratch / 'repo'}"
    fast, plain = archive_command(url), archive_command(url, fast=False)
    # One untimed push archives the segment and leaves the spool marker that the timed spool hits find.
    subprocess.run(["/bin/sh", "-c", expand(fast, f"pg_wal/{hit}")], cwd=data, check=True)

    def new_segment(i: int) -> str:
        return wn.segment_name(1, 0x1000 + i)

    def upload(i: int) -> str:
        shutil.copyfile(segment, pg_wal / new_segment(i))
        return expand(fast, f"pg_wal/{new_segment(i)}")

    def remove_copy(i: int) -> None:
        (copies / hit).unlink(missing_ok=True)

    cp = f"cp %p {shlex.quote(str(copies))}/%f"
    calls = [
        PushCall(PUSH_BASELINE, lambda i: expand(cp, f"pg_wal/{hit}"), remove_copy),
        PushCall(
            "cp %p DIR/%f && sync DIR/%f",
            lambda i: expand(f"{cp} && sync {shlex.quote(str(copies))}/%f", f"pg_wal/{hit}"),
            remove_copy,
        ),
        PushCall("wal-push, spool hit (generated command)", lambda i: expand(fast, f"pg_wal/{hit}")),
        PushCall("wal-push, spool hit (python -m pgrecovery)", lambda i: expand(plain, f"pg_wal/{hit}")),
        PushCall("wal-push that uploads a new segment", upload, lambda i: (pg_wal / new_segment(i)).unlink()),
    ]
    return calls, data


def run_push_rounds(calls: Sequence[PushCall], runs: int, cwd: Path) -> dict[str, PushTiming]:
    results = {c.name: PushTiming(c) for c in calls}
    for r in range(runs):
        for c in rotated(calls, r):
            command = c.prepare(r)
            t0 = time.perf_counter()
            done = subprocess.run(["/bin/sh", "-c", command], cwd=cwd, capture_output=True, check=False)
            elapsed = time.perf_counter() - t0
            if done.returncode != 0:
                raise RuntimeError(f"{command} failed ({done.returncode}): {done.stderr.decode(errors='replace')}")
            c.cleanup(r)
            results[c.name].seconds.append(elapsed)
    return results


def sustained_load(cluster: LocalCluster, seconds: int, clients: int = 4) -> dict[str, Any]:
    """``pgbench -N`` for ``seconds`` while the server archives; the .ready backlog sampled every second."""
    pgbench = find_tool("pgbench").path
    before = archiver_status(cluster.conninfo())
    lsn0 = current_lsn(cluster)
    cmd = [str(pgbench), "-N", "-c", str(clients), "-j", "2", "-T", str(seconds)]
    cmd += ["-h", cluster.host, "-p", str(cluster.port), "-U", cluster.superuser, DBNAME]
    samples: list[tuple[float, int]] = []
    t0 = time.monotonic()
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        while proc.poll() is None:
            samples.append((time.monotonic() - t0, ready_count(cluster)))
            time.sleep(1)
        output = proc.stdout.read() if proc.stdout else ""
    if proc.returncode != 0:
        raise RuntimeError(f"pgbench failed:\n{output}")
    load_s = time.monotonic() - t0
    at_end = ready_count(cluster)
    wal = current_lsn(cluster) - lsn0
    drained = time.monotonic()
    while ready_count(cluster) > 0 and time.monotonic() - drained < 300:
        time.sleep(0.1)
    drain_s = time.monotonic() - drained
    after = archiver_status(cluster.conninfo())
    counts = [n for _, n in samples]
    trend = statistics.linear_regression([t for t, _ in samples], counts).slope * 60 if len(samples) > 1 else 0.0
    tps = re.search(r"tps = ([0-9.]+)", output)
    failed = after.failed_count - before.failed_count
    # A backlog that grows never returns to zero; one that merely fluctuates (bursts of WAL after checkpoints,
    # archive-ahead batches) drains again within seconds.
    windows = [[n for t, n in samples if lo <= t < lo + WINDOW] for lo in range(0, max(1, int(load_s)), WINDOW)]
    windows = [w for w in windows if w]
    return {
        "command": f"pgbench -N -c {clients} -j 2 -T {seconds}",
        "seconds": load_s,
        "tps": float(tps.group(1)) if tps else None,
        "wal_bytes": wal,
        "samples": samples,
        "max_ready": max(counts, default=0),
        "mean_ready": statistics.fmean(counts) if counts else 0.0,
        "ready_at_end": at_end,
        "trend_per_minute": trend,
        "windows": [{"min": min(w), "max": max(w)} for w in windows],
        "drain_seconds": drain_s,
        "archived": after.archived_count - before.archived_count,
        "failed": failed,
        # No failure, and the archiver caught up (at most one file waiting) at least once in every window.
        "pass": failed == 0 and all(min(w) <= 1 for w in windows),
    }


def report_push(results: dict[str, PushTiming], runs: int) -> list[Any]:
    print(f"\n2. archive_command per call (16 MB segment, run by /bin/sh -c, median of {runs} runs)")
    header = f"{'command':<42} {'median ms':>10} {'min ms':>8} {'max ms':>8} {'vs cp':>7}"
    print(header)
    print("-" * len(header))
    base = results[PUSH_BASELINE].median
    rows = []
    for res in results.values():
        ratio = res.median / base
        print(
            f"{res.call.name:<42} {res.median * 1e3:10.1f} {min(res.seconds) * 1e3:8.1f} "
            f"{max(res.seconds) * 1e3:8.1f} {ratio:6.1f}x"
        )
        rows.append(
            {
                "command": res.call.name,
                "seconds": res.seconds,
                "median_s": res.median,
                "min_s": min(res.seconds),
                "ratio_vs_cp": ratio,
            }
        )
    return rows


def report_sustained(load: dict[str, Any]) -> None:
    wal = load["wal_bytes"]
    print(
        f"\nsustained load: {load['command']}: {load['tps'] or 0:,.0f} tps, {wal / MB:,.0f} MB of WAL "
        f"({wal / SEGMENT:.0f} segments, {wal / SEGMENT / load['seconds']:.2f}/s)"
    )
    print(
        f"  .ready backlog: max {load['max_ready']}, mean {load['mean_ready']:.1f}, at the end of the load "
        f"{load['ready_at_end']}, trend {load['trend_per_minute']:+.2f} segments/min; drained "
        f"{load['drain_seconds']:.1f} s after the load"
    )
    spans = ", ".join(f"{w['min']}-{w['max']}" for w in load["windows"])
    print(f"  backlog per {WINDOW} s window (min-max): {spans}")
    verdict = "PASS" if load["pass"] else "MISS"
    print(
        f"  pg_stat_archiver: archived +{load['archived']}, failed +{load['failed']}; "
        f"the backlog drained in every window: {verdict}"
    )
