"""Part 1 of ``bench_peers.py``: WAL push, one archive_command call at a time, as PostgreSQL's archiver makes it
(``/bin/sh -c`` as the server's OS user, in the data directory, ``%p`` = ``pg_wal/NAME``, a ``.ready`` file that
becomes ``.done`` after each success), on real 16 MB segments copied under names never archived before.

* no backlog: one fresh segment, the only ``.ready`` file, then the call;
* a backlog: ``BACKLOG`` segments ``.ready`` at once, then one call per segment in order (the time per segment).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any

from _common import postgres_dir, rotated
from _peers_setup import as_postgres

from pgrecovery import _walnames as wn
from pgrecovery.cluster import default_run_as

BACKLOG = 16
CP = "cp %p DIR/%f (reference)"


@dataclass(frozen=True)
class Pusher:
    """One archive_command (``%p``/``%f`` left in); ``settle`` (untimed) runs after each backlog run (waits for
    background work to finish, so that it does not slow the next method)."""

    name: str
    command: str
    settle: Callable[[], None] = lambda: None
    single: bool = True  # timed without a backlog
    backlog: bool = True  # timed with a backlog
    # a data directory of its own: a method with a worker that pushes .ready files ahead (pgrecovery's) must not
    # push the other methods' segments while they are timed, as it would in a shared pg_wal
    own_dir: bool = False


@dataclass
class PushTimes:
    pusher: Pusher
    single: list[float] = field(default_factory=list)  # seconds per call, no backlog
    backlog: list[float] = field(default_factory=list)  # seconds per segment, with a backlog

    def row(self) -> dict[str, Any]:
        return {
            "method": self.pusher.name,
            "single_s": self.single,
            "single_median_s": statistics.median(self.single) if self.single else None,
            "backlog_per_segment_s": self.backlog,
            "backlog_median_s": statistics.median(self.backlog) if self.backlog else None,
        }


class Scratch:
    """A scratch data directory owned by the server's OS user, with ``pg_wal/archive_status`` and the source's
    ``global/pg_control`` (pgBackRest's archive-push reads it); segments are laid there under new names (a counter,
    so no name is ever archived twice). ``{copies}`` in a command is the directory ``cp`` copies into."""

    def __init__(self, segments: Sequence[Path], pgdata: Path, names: Iterator[int] | None = None) -> None:
        self.pgdata = pgdata
        self.root = postgres_dir("pgrecovery-bench-peers-push-")
        self.data = self.root / "data"
        self.status = self.data / "pg_wal" / "archive_status"
        self.status.mkdir(parents=True)
        self.copies = self.root / "copies"
        self.copies.mkdir()
        self.segments = list(segments)
        self.names = names if names is not None else count(0x4000)
        who = default_run_as()
        self.ids = None if who is None else (os.stat(self.root).st_uid, os.stat(self.root).st_gid)
        (self.data / "global").mkdir()
        # a running server's mark: pgrecovery's WAL worker stays for a running server (and leaves 2 s after its
        # postmaster.pid is gone), as pgBackRest's async process works whether or not one runs
        (self.data / "postmaster.pid").write_text(f"{os.getpid()}\n{self.data}\n")
        shutil.copyfile(pgdata / "global" / "pg_control", self.data / "global" / "pg_control")
        for d in (self.data, self.data / "pg_wal", self.status, self.copies, self.data / "global"):
            self._own(d)
        self._own(self.data / "postmaster.pid")
        self._own(self.data / "global" / "pg_control")

    def sibling(self) -> Scratch:
        """Another data directory like this one, drawing from the same name counter (names stay unique)."""
        return Scratch(self.segments, self.pgdata, self.names)

    def _own(self, path: Path) -> None:
        if self.ids:
            os.chown(path, *self.ids)

    def lay(self, n: int) -> list[str]:
        """``n`` segments (the real ones in turn) under fresh names; then, all at once, their ``.ready`` files (a
        method that pushes ahead must not get a head start while the files are being copied)."""
        names = []
        for i in range(n):
            name = wn.segment_name(1, next(self.names))
            shutil.copyfile(self.segments[i % len(self.segments)], self.data / "pg_wal" / name)
            self._own(self.data / "pg_wal" / name)
            names.append(name)
        for name in names:
            (self.status / f"{name}.ready").touch()
            self._own(self.status / f"{name}.ready")
        return names

    def clear(self, names: Sequence[str]) -> None:
        for name in names:
            (self.data / "pg_wal" / name).unlink(missing_ok=True)
            for suffix in (".ready", ".done"):
                (self.status / f"{name}{suffix}").unlink(missing_ok=True)
        for p in self.copies.iterdir():
            p.unlink()


def archive(command: str, names: Sequence[str], cwd: Path, env: Mapping[str, str]) -> float:
    """Call ``command`` for each of ``names`` in order as the archiver does; the seconds taken in all."""
    t0 = time.perf_counter()
    for name in names:
        cmd = command.replace("%p", f"pg_wal/{name}").replace("%f", name)
        done = subprocess.run(as_postgres(["/bin/sh", "-c", cmd]), cwd=cwd, env=env, capture_output=True)
        if done.returncode != 0:
            raise RuntimeError(f"{cmd} failed ({done.returncode}): {done.stderr.decode(errors='replace')[-2000:]}")
        status = cwd / "pg_wal" / "archive_status"
        os.rename(status / f"{name}.ready", status / f"{name}.done")
    return time.perf_counter() - t0


def run_push(
    pushers: Sequence[Pusher], scratch: Scratch, env: Mapping[str, str], runs: int, rounds: int
) -> dict[str, PushTimes]:
    """``runs`` single calls of every pusher (alternating, order rotated each run), then ``rounds`` backlogs."""
    full_env = {**os.environ, **env}
    results = {p.name: PushTimes(p) for p in pushers}
    single = [p for p in pushers if p.single]
    dirs = {p.name: scratch.sibling() if p.own_dir else scratch for p in pushers}
    try:
        for r in range(runs):
            for p in rotated(single, r):
                where = dirs[p.name]
                names = where.lay(1)
                command = p.command.replace("{copies}", str(where.copies))
                results[p.name].single.append(archive(command, names, where.data, full_env))
                where.clear(names)
            line = ", ".join(f"{results[p.name].single[-1] * 1e3:.0f}" for p in single)
            print(f"  run {r + 1}/{runs} (ms, in the table's order): {line}", flush=True)
        with_backlog = [p for p in pushers if p.backlog]
        for r in range(rounds):
            for p in rotated(with_backlog, r):
                where = dirs[p.name]
                names = where.lay(BACKLOG)
                seconds = archive(p.command, names, where.data, full_env) / BACKLOG
                p.settle()
                where.clear(names)
                results[p.name].backlog.append(seconds)
                print(f"  backlog round {r + 1}/{rounds}  {p.name:<46} {seconds * 1e3:7.1f} ms per segment", flush=True)
    finally:
        for where in {id(d): d for d in [scratch, *dirs.values()]}.values():
            shutil.rmtree(where.root, ignore_errors=True)
    return results


def pause(seconds: float) -> Callable[[], None]:
    return lambda: time.sleep(seconds)
