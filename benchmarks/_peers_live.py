"""Part 1b of ``bench_peers.py``: WAL push per call from a live server writing a trickle of WAL, the situation of
a quiet primary: the server fills each segment over a few seconds, then calls archive_command once for it.

The server's archive_command is a script that runs both tools on each segment, one after the other, and logs how
long each call took (``date +%s%N`` around it, the same for both): pgrecovery's `archive_command` (local
repository) and ``pgbackrest archive-push`` (local repository). The order is swapped halfway. The first calls
after each switch are not counted (pgrecovery's first call starts its WAL worker).
"""

from __future__ import annotations

import shlex
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from _common import DBNAME
from _peers_setup import PgBackRest, set_archive_command

from pgrecovery import LocalCluster
from pgrecovery.cluster import default_run_as
from pgrecovery.wal.archiver import archive_command

WARMUP = 2  # calls not counted after each switch of the command
PGR = "pgrecovery, local"
PGB = "pgBackRest, local"


def _as_script_part(command: str) -> str:
    """An archive_command made a part of a shell script whose ``$1`` is ``%p`` and ``$2`` is ``%f``."""
    return command.replace("'%p'", '"$1"').replace("%p", '"$1"').replace("%f", '"$2"').replace("%%", "%")


def _script(path: Path, log: Path, calls: list[tuple[str, str]]) -> None:
    lines = ["#!/bin/sh", "# $1: %p, $2: %f"]
    for name, command in calls:
        lines += [
            "t0=$(date +%s%N)",
            f"{_as_script_part(command)}",
            "r=$?",
            "t1=$(date +%s%N)",
            f'echo "$2 {name.replace(" ", "_")} $t0 $t1 $r" >> {shlex.quote(str(log))}',
            '[ "$r" = 0 ] || exit "$r"',
        ]
    path.write_text("\n".join(lines) + "\n")
    _own(path)


def _own(path: Path) -> None:
    who = default_run_as()
    if who:
        import shutil

        shutil.chown(path, who, who)


def _trickle(cluster: LocalCluster, stop: threading.Event) -> None:
    """Small updates of the mixed-text rows, about 15 transactions a second (a segment every 5 to 10 s: still far
    more than a quiet primary writes, whose segments take minutes, but the machine is not kept busy by the writes
    themselves, which would time the scheduler rather than the tools)."""
    top = int(cluster.query("select max(id) from bench_events", dbname=DBNAME)[0][0])
    lo = 1
    with cluster.connect(DBNAME) as conn:
        conn.autocommit = True
        while not stop.is_set():
            conn.execute("update bench_events set amount = amount + 0.01 where id between %s and %s", (lo, lo + 149))
            lo = lo + 150 if lo + 150 < top else 1
            time.sleep(0.06)


def _calls(log: Path) -> list[tuple[str, str, float]]:
    out = []
    if log.exists():
        for line in log.read_text().splitlines():
            name, tool, t0, t1, rc = line.split()
            if rc == "0":
                out.append((name, tool.replace("_", " "), (int(t1) - int(t0)) / 1e9))
    return out


def live_push(
    cluster: LocalCluster, pgbr: PgBackRest, repo_url: str, spool: str, workdir: Path, segments: int
) -> dict[str, Any]:
    """``segments`` segments in each order (after `WARMUP` calls); per tool the seconds of each counted call."""
    workdir.mkdir(parents=True, exist_ok=True)
    _own(workdir)
    log = workdir / "calls.log"
    pair = [(PGR, archive_command(repo_url, spool_dir=spool)), (PGB, pgbr.archive_command("local"))]
    times: dict[str, list[float]] = {PGR: [], PGB: []}
    orders: list[dict[str, Any]] = []
    stop = threading.Event()
    writer = threading.Thread(target=_trickle, args=(cluster, stop), daemon=True)
    writer.start()
    try:
        for order in (pair, pair[::-1]):
            script = workdir / f"archive-{len(times[PGR])}.sh"
            _script(script, log, order)
            seen = len(_calls(log))
            set_archive_command(cluster, f"sh {shlex.quote(str(script))} %p %f")
            deadline = time.monotonic() + 300
            while len(_calls(log)) < seen + 2 * (segments + WARMUP) and time.monotonic() < deadline:
                time.sleep(0.2)
            calls = _calls(log)[seen + 2 * WARMUP :]
            mine: dict[str, list[float]] = {PGR: [], PGB: []}
            for _name, tool, seconds in calls:
                times[tool].append(seconds)
                mine[tool].append(seconds)
            orders.append(
                {"first": order[0][0], **{t: {"seconds": v, "median_s": _median(v)} for t, v in mine.items()}}
            )
            line = ", ".join(f"{t} {statistics.median(v) * 1e3:.0f} ms" for t, v in times.items() if v)
            print(f"  order {' then '.join(t for t, _ in order)}: {len(calls) // 2} segments; medians so far: {line}")
    finally:
        stop.set()
        writer.join(30)
    return {
        **{tool: {"seconds": v, "median_s": _median(v)} for tool, v in times.items()},
        "orders": orders,
    }


def _median(v: list[float]) -> float | None:
    return statistics.median(v) if v else None
