"""Crash consistency: ``kill -9`` of the real command at seeded random points, then the invariants and a rerun.

Each operation runs as PostgreSQL or cron would run it (``python -m pgrecovery ...`` in its own process group).
One uninterrupted run measures how long it takes; then it is killed with SIGKILL at delays spread uniformly over
that duration (one per stratum, with seeded jitter). After every kill:

- ``list`` shows only complete backups: each listed backup passes `Verifier` (checksums, readability) and a base
  backup's WAL range is in the archive;
- every WAL file PostgreSQL (or the simulated archiver) was told is archived is in the repository and reads back
  with its checksum; so does every file an archive-ahead marker vouches for;
- the server is not left in backup mode (the killed session is gone, no backup_label, a new backup starts);
- the processes the killed command started end by themselves;
- ``pgrecovery clean`` removes what the killed run left, and the rerun of the same command succeeds;
- ``wal-verify`` is clean once the archiver has caught up.

The number of kill points and survivals per operation go to a JSON file (``PGRECOVERY_RELIABILITY_OUT`` or
``tests/.results/crash_sweep.json``) for docs/reliability.md. ``PGRECOVERY_SOAK=1`` (or a number) multiplies the
kill points; ``PGRECOVERY_SWEEP_SEED`` changes the seed.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from pgtesting import archive_settings, pg_substitute
from pgtesting import owned_tmpdir as _owned_tmpdir
from pgtesting import wait_archived as _wait_archived

from pgrecovery import BaseBackup, LocalCluster, LogicalBackup, Repository, Verifier
from pgrecovery import _fastpath as fastpath
from pgrecovery import _spool as spool_mod
from pgrecovery import _walnames as wn
from pgrecovery.catalog import BACKUPS, leftovers
from pgrecovery.retention import EXPIRED
from pgrecovery.storage._readers import modified_of
from pgrecovery.wal.archiver import WalArchiver, archive_command, restore_command

SEED = int(os.environ.get("PGRECOVERY_SWEEP_SEED", "20261125"))
_SOAK = os.environ.get("PGRECOVERY_SOAK", "")
SOAK = 0 if _SOAK in ("", "0") else (int(_SOAK) if _SOAK.isdigit() and int(_SOAK) > 1 else 5)
SCALE = SOAK or 1
# kill points per operation in the fast profile (at least 50 in total)
POINTS = {
    "backup logical": 10,
    "backup base": 10,
    "wal-push": 8,
    "wal-fetch": 6,
    "wal-prefetch": 5,
    "copy": 6,
    "expire": 6,
    "restore base": 5,
    "restore logical": 5,
}
FINGERPRINT = "select count(*), sum(i), md5(string_agg(pad, ',' order by i)) from t"
ABORT_WARNING = "aborting backup due to backend exiting before pg_backup_stop was called"
HERE = Path(__file__).resolve().parent


# -- running and killing ----------------------------------------------------------------------------------------


def _group_alive(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    alive = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            alive.append(int(entry))
    return alive


def _wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out ({timeout:.0f} s) waiting for {what}")
        time.sleep(0.02)


class Outcome:
    """One run of a command: killed or not, exit code, output, and when it started to change things."""

    def __init__(
        self, cmd: Sequence[str], code: int, killed: bool, seconds: float, out: str, err: str, work_start: float | None
    ) -> None:
        self.cmd, self.code, self.killed, self.seconds, self.out, self.err = cmd, code, killed, seconds, out, err
        self.work_start = work_start

    def check(self) -> Outcome:
        assert self.code == 0, f"{shlex.join(self.cmd)} exited {self.code}:\n{self.err[-3000:]}"
        return self


def run(
    cmd: Sequence[str],
    *,
    kill_after: float | None = None,
    cwd: str | Path | None = None,
    env: dict[str, str] | None = None,
    probe: Callable[[], object] | None = None,
    group: bool = False,
) -> Outcome:
    """Run ``cmd`` in its own process group; with ``kill_after``, SIGKILL the process (not its children) then,
    or with ``group`` the whole group, as PostgreSQL signals an archive_command or restore_command (its children
    lead process groups, and the shell a generated command runs in is one of them).

    After a kill, the processes it started must end by themselves (they notice their parent is gone). ``probe``
    (polled while the command runs) tells when the command started to change things: its first different answer.
    """
    full_env = {k: v for k, v in os.environ.items() if k != "PGRECOVERY_REPO"}
    full_env.update(env or {})
    initial = probe() if probe is not None else None
    work_start = None
    limit = kill_after if kill_after is not None else 300.0
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, open(os.devnull, "rb") as devnull:
        t0 = time.monotonic()
        proc = subprocess.Popen(
            list(cmd), stdin=devnull, stdout=out, stderr=err, cwd=cwd, env=full_env, start_new_session=True
        )
        killed = False
        try:
            if probe is None:
                proc.wait(timeout=limit)
            else:
                while proc.poll() is None:
                    if time.monotonic() - t0 > limit:
                        raise subprocess.TimeoutExpired(cmd, limit)
                    if work_start is None and probe() != initial:
                        work_start = time.monotonic() - t0
                    time.sleep(0.005)
        except subprocess.TimeoutExpired:
            if kill_after is None:
                os.killpg(proc.pid, signal.SIGKILL)
                raise
            (os.killpg if group else os.kill)(proc.pid, signal.SIGKILL)
            killed = True
            proc.wait()
        seconds = time.monotonic() - t0
        if killed:
            try:
                _wait_until(lambda: not _group_alive(proc.pid), 30, f"the children of killed {cmd[3:5]} to end")
            except AssertionError:
                os.killpg(proc.pid, signal.SIGKILL)
                raise
        out.seek(0)
        err.seek(0)
        text_out, text_err = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    return Outcome(cmd, proc.returncode, killed, seconds, text_out, text_err, work_start)


def cli(url: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "pgrecovery", "--repo", url, *args]


def tree(path: Path) -> list[str]:
    """Every file and directory below ``path`` (a probe: it changes as soon as anything is written there)."""
    found = []
    for here, dirs, files in os.walk(path):
        found += [os.path.join(here, n) for n in dirs + files]
    return sorted(found)


class Sweep:
    """Seeded kill delays for one operation, and the tally of what happened."""

    def __init__(self, op: str, *, where: str = "", points: int | None = None) -> None:
        self.op = f"{op} ({where})" if where else op  # where: the storage, when not file://
        self.rng = random.Random(f"{SEED}:{self.op}")
        self.points = (points if points is not None else POINTS[op]) * SCALE
        self.kills = 0
        self.survived = 0
        self.finished_first = 0
        self.phases: dict[str, int] = {}
        self.failures: list[str] = []
        self.duration = 0.0
        self.work_start = 0.0

    def delays(self, measured: Outcome) -> list[float]:
        """Kill delays spread over the measured run: a fifth of them (one per equal slice, at a seeded random
        place in it) over the start-up, before the command changed anything; the others likewise over the rest,
        where the work happens."""
        measured.check()
        self.duration = measured.seconds
        begin = measured.work_start if measured.work_start is not None else 0.0
        self.work_start = begin
        n = self.points
        early = max(1, n // 5) if begin > 0 else 0

        def spread(lo: float, hi: float, k: int) -> list[float]:
            return [lo + (hi - lo) * (i + self.rng.random()) / k for i in range(k)]

        return spread(0.0, begin, early) + spread(begin, self.duration, n - early)

    def point(self, delay: float, body: Callable[[float], str | None]) -> None:
        """Run one kill point; ``body`` returns the phase the kill landed in (None: the command finished first)."""
        try:
            phase = body(delay)
            for _ in range(3):  # it ran faster than measured: kill it earlier
                if phase is not None:
                    break
                self.finished_first += 1
                delay *= self.rng.uniform(0.4, 0.9)
                phase = body(delay)
        except AssertionError as e:
            self.kills += 1
            self.failures.append(f"kill after {delay:.3f} s: {e}")
            return
        if phase is None:
            return
        self.kills += 1
        self.survived += 1
        self.phases[phase] = self.phases.get(phase, 0) + 1

    def report(self) -> dict[str, Any]:
        return {
            "seed": SEED,
            "soak": bool(SOAK),
            "measured_seconds": round(self.duration, 3),
            "work_started_after_seconds": round(self.work_start, 3),
            "kill_points": self.kills,
            "survived": self.survived,
            "finished_before_kill": self.finished_first,
            "phases": dict(sorted(self.phases.items())),
            "failures": self.failures,
        }

    def finish(self, capsys: pytest.CaptureFixture[str]) -> None:
        _record(self.op, self.report())
        with capsys.disabled():
            print(
                f"\ncrash sweep {self.op}: {self.survived}/{self.kills} kill points survived "
                f"({self.finished_first} finished before the kill; measured {self.duration:.2f} s, work from "
                f"{self.work_start:.2f} s; "
                f"phases {self.phases})"
            )
        assert not self.failures, f"{self.op}: " + "\n".join(self.failures)
        assert self.kills >= max(1, self.points // 2), f"{self.op}: too few runs were actually killed"


def _results_path() -> Path:
    explicit = os.environ.get("PGRECOVERY_RELIABILITY_OUT")
    return Path(explicit) if explicit else HERE.parent / ".results" / "crash_sweep.json"


def _record(op: str, data: dict[str, Any]) -> None:
    path = _results_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError):
        results = {}
    results.setdefault("operations", {})[op] = data
    ops = results["operations"].values()
    results["total"] = {
        "kill_points": sum(o["kill_points"] for o in ops),
        "survived": sum(o["survived"] for o in ops),
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


# -- invariants -------------------------------------------------------------------------------------------------


class Checker:
    """The invariants on one repository, remembering what already passed (stored objects are immutable)."""

    def __init__(self, repo: Repository, env: dict[str, str] | None = None) -> None:
        self.repo = repo
        self.env = env  # what a command needs to reach the repository (an object store's FSSPEC_* variables)
        self.verified: set[str] = set()
        self.wal_ok: set[str] = set()

    def listed_backups(self, *, again: bool = False) -> list[str]:
        """Every listed backup is complete: its files match the manifest, and a base backup has its WAL."""
        ids = []
        for m in self.repo.backups():
            ids.append(m.id)
            if m.id in self.verified and not again:
                continue
            report = Verifier(self.repo).verify(m.id)
            assert report.ok, f"listed backup {m.id} fails verification: {report.failures}"
            if m.physical is not None:
                archiver = WalArchiver(self.repo, segment_size=m.physical.wal_segment_size)
                gap = archiver.missing(m.physical.start_wal, m.physical.stop_wal)
                assert not gap, f"listed base backup {m.id} lacks WAL {gap}"
                for src in {x.source for x in m.physical.members} - {m.id}:
                    assert self.repo.exists(f"backups/{src}/manifest.json"), f"{m.id} needs {src}, which is gone"
            self.verified.add(m.id)
        return ids

    def wal_durable(self, names: set[str]) -> None:
        """Each of ``names`` (acknowledged as archived) is stored and reads back with its checksum."""
        archiver = WalArchiver(self.repo)
        for name in sorted(names - self.wal_ok):
            obj = archiver.find(name)
            assert obj is not None, f"{name} was acknowledged as archived but is not in {self.repo.display_url}"
            archiver.read(name)  # raises ChecksumMismatch when corrupt
            self.wal_ok.add(name)

    def markers(self, spool: Path) -> set[str]:
        """Archive-ahead markers answer wal-push with success: each must name a durable, correct object."""
        found = set()
        tag = spool_mod.repo_tag(self.repo.url)
        archiver = WalArchiver(self.repo)
        directory = spool / "archived"
        for marker in directory.iterdir() if directory.is_dir() else []:
            parts = marker.read_text().split() if not marker.name.endswith(".tmp") else []
            if len(parts) != 7 or parts[6] != tag:
                continue
            obj = archiver.find(marker.name)
            assert obj is not None, f"spool marker {marker.name} vouches for a file missing from the repository"
            assert obj.sha256 == parts[5], f"spool marker {marker.name} names another content than the stored one"
            found.add(marker.name)
        self.wal_durable(found)
        return found

    def no_corrupt_wal(self) -> None:
        """Nothing under a final WAL object name is corrupt (partial uploads never appear under the name)."""
        archiver = WalArchiver(self.repo)
        for tli in archiver.timelines():
            for name, objs in archiver.index(tli).items():
                if name in self.wal_ok:
                    continue
                assert len(objs) == 1, f"{name} is stored {len(objs)} times"
                archiver.read(name)
                self.wal_ok.add(name)

    def wal_verify_clean(self) -> None:
        res = run(cli(self.repo.url, "wal-verify", "--json"), env=self.env)
        assert res.code == 0, f"wal-verify on {self.repo.display_url} is not clean: {res.out}{res.err}"

    def clean_removes(self, expected: set[str] | None = None) -> list[str]:
        """`pgrecovery clean` removes every leftover (nothing else runs), and leaves no backup half there."""
        before = {x.id for x in leftovers(self.repo)}
        res = run(cli(self.repo.url, "clean", "--json"), env=self.env).check()
        removed = {x["id"] for x in json.loads(res.out)["removed"]}
        assert removed == before, f"clean removed {sorted(removed)}, leftovers were {sorted(before)}"
        if expected is not None:
            assert removed <= expected, f"clean removed {sorted(removed - expected)}, not left by the killed run"
        assert not leftovers(self.repo), f"leftovers remain after clean: {leftovers(self.repo)}"
        return sorted(removed)


def _acked_by_server(pg: LocalCluster) -> set[str]:
    """WAL files the server considers archived: ``.done`` status files, and pg_stat_archiver's last one."""
    status = pg.data_dir / "pg_wal" / "archive_status"
    names = {p.name[: -len(".done")] for p in status.glob("*.done")}
    (last,) = pg.query("select last_archived_wal from pg_stat_archiver")[0]
    if last:
        names.add(str(last))
    return {n for n in names if wn.is_wal_file(n)}


def _fingerprint(pg: LocalCluster, dbname: str) -> tuple[Any, ...]:
    return tuple(pg.query(FINGERPRINT, dbname=dbname)[0])


def _sessions(pg: LocalCluster, appname: str) -> int:
    return int(pg.query("select count(*) from pg_stat_activity where application_name = %s", (appname,))[0][0])


def _log_count(pg: LocalCluster, text: str) -> int:
    assert pg.log_file is not None
    return pg.log_file.read_text(errors="replace").count(text)


def _copy_repo(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns(".*.tmp"))
    return dest


# -- the world ---------------------------------------------------------------------------------------------------


def _crash_database(pg: LocalCluster, rows: int) -> str:
    """The sweeps' database ``crash``, with a table ``t`` of ``rows`` rows (see FINGERPRINT); its conninfo."""
    pg.execute("create database crash")
    pg.execute(
        "create table t (i int primary key, pad text not null);"
        f"insert into t select i, md5(i::text) || md5((i * 7)::text) from generate_series(1, {int(rows)}) i",
        dbname="crash",
    )
    return pg.conninfo("crash")


def _archived_segments(repo: Repository) -> list[str]:
    archiver = WalArchiver(repo)
    return sorted(n for t in archiver.timelines() for n in archiver.index(t) if wn.is_segment(n))


def _backup_chain(pg: LocalCluster, repo: Repository, crash: str, logical: int) -> tuple[list[Any], Any, Any]:
    """The sweeps' backups: ``logical`` logical backups of ``crash``, a full base backup, WAL switched past it, a
    second full one and an incremental on that; (the logical backups, the first full, the incremental)."""
    dumps = [LogicalBackup(dbname=crash).run(repo) for _ in range(logical)]
    full = BaseBackup(dbname=pg.conninfo()).run(repo)
    for _ in range(2):
        pg.execute("select pg_switch_wal()")
        pg.execute("checkpoint")
    full2 = BaseBackup(dbname=pg.conninfo()).run(repo)
    pg.execute("select pg_switch_wal()")
    return dumps, full, BaseBackup(dbname=pg.conninfo(), parent=full2.id).run(repo)


@pytest.fixture(scope="module")
def world() -> Iterator[dict[str, Any]]:
    """A cluster archiving into repository A (PostgreSQL runs wal-push), a few MB of data, some backups.

    ``snapshot``: a copy of A taken after setup (3 logical backups, 2 full base backups and an incremental one,
    with their WAL) for the copy and expire sweeps, which need the same starting point at every kill point.
    """
    root = _owned_tmpdir("pgrecovery-crash-")
    repo_dir = root / "repo"
    repo_dir.mkdir()
    os.chown(repo_dir, root.stat().st_uid, root.stat().st_gid)
    url = f"file://{repo_dir}"
    pg = LocalCluster.temporary(settings=archive_settings(url, fsync=False, max_connections=40))
    try:
        pg.start()
        crash = _crash_database(pg, 40000)
        repo = Repository(url)
        logical, full, inc = _backup_chain(pg, repo, crash, 6)
        _wait_archived(pg)
        snapshot = _copy_repo(repo_dir, root / "snapshot")
        segments = _archived_segments(repo)
        yield {
            "pg": pg,
            "root": root,
            "url": url,
            "repo": repo,
            "crash": crash,
            "source": _fingerprint(pg, "crash"),
            "logical": logical,
            "full": full,
            "inc": inc,
            "snapshot": snapshot,
            "segments": segments,
            "checker": Checker(repo),
        }
    finally:
        pg.destroy()
        shutil.rmtree(root, ignore_errors=True)


def _server_checks(world: dict[str, Any]) -> None:
    """Invariants about the live server and its archive (repository A)."""
    pg: LocalCluster = world["pg"]
    checker: Checker = world["checker"]
    assert not (pg.data_dir / "backup_label").exists(), "backup_label left in the data directory"
    checker.wal_durable(_acked_by_server(pg))
    checker.markers(pg.data_dir / "pgrecovery_spool")
    checker.listed_backups()


# -- backups ----------------------------------------------------------------------------------------------------


def _backup_sweep(
    world: dict[str, Any], op: str, args: list[str], capsys: pytest.CaptureFixture[str], sweep: Sweep | None = None
) -> None:
    """``world["env"]``: the environment the commands need for the repository (object stores)."""
    pg: LocalCluster = world["pg"]
    checker: Checker = world["checker"]
    url = world["url"]
    env = world.get("env") or {}
    sweep = sweep or Sweep(op)
    base = op == "backup base"
    repo: Repository = world["repo"]
    measure_env = {**env, "PGAPPNAME": "sweep-measure"}
    measured = run(cli(url, *args), env=measure_env, probe=lambda: repo.list_keys("backups"))
    counter = iter(range(10**6))

    def body(delay: float) -> str | None:
        appname = f"sweep-{op.split()[-1]}-{next(counter)}"
        before = set(checker.listed_backups())
        aborts = _log_count(pg, ABORT_WARNING) if base else 0
        res = run(cli(url, *args), kill_after=delay, env={**env, "PGAPPNAME": appname})
        if not res.killed:
            res.check()
            return None
        # the server notices the dropped connection and ends that session (and with it any backup it held)
        _wait_until(lambda: _sessions(pg, appname) == 0, 30, f"the killed command's sessions ({appname}) to end")
        left = {x.id for x in leftovers(world["repo"])}
        after = set(checker.listed_backups())
        _server_checks(world)
        phase = "before claiming an id"
        if after - before:
            phase = "after the manifest was written"
        elif left:
            phase = "while writing the backup"
        if base and _log_count(pg, ABORT_WARNING) > aborts:
            phase = "in backup mode (server aborted the backup)"
        checker.clean_removes(left)
        rerun = run(cli(url, *args), env=env).check()  # a new backup starts and completes right after
        new = json.loads(rerun.out)["id"] if "--json" in args else None
        assert new is None or new in checker.listed_backups()
        _server_checks(world)
        checker.wal_verify_clean()
        return phase

    for delay in sweep.delays(measured):
        sweep.point(delay, body)
    sweep.finish(capsys)


def test_backup_logical_survives_kill_9(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    _backup_sweep(world, "backup logical", ["backup", "logical", "--dbname", world["crash"], "--json"], capsys)


def test_backup_base_survives_kill_9(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    _backup_sweep(world, "backup base", ["backup", "base", "--dbname", world["pg"].conninfo(), "--json"], capsys)


# -- WAL --------------------------------------------------------------------------------------------------------


def _fake_pgdata(dest: Path, segments: Path, names: list[str]) -> Path:
    """A directory shaped like a data directory whose pg_wal holds real segments waiting to be archived
    (hard links to ``segments``: wal-push only reads them)."""
    status = dest / "pg_wal" / "archive_status"
    status.mkdir(parents=True)
    for name in names:
        os.link(segments / name, dest / "pg_wal" / name)
        (status / f"{name}.ready").touch()
    return dest


def test_wal_push_survives_kill_9(world: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _wal_push_sweep(world, tmp_path, capsys, lambda n: Repository(f"file://{tmp_path / f'repo{n}'}"))


def _wal_push_sweep(
    world: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    new_repo: Callable[[int], Repository],
    sweep: Sweep | None = None,
) -> None:
    """The test plays PostgreSQL's archiver: archive_command on the oldest .ready file, .done on exit 0 only.
    Each kill point archives into a fresh repository (``new_repo``); ``world["env"]`` reaches it."""
    sweep = sweep or Sweep("wal-push")
    env = world.get("env") or {}
    names = world["segments"][-8:]
    cycle = iter(range(10**6))
    segments = tmp_path / "segments"
    segments.mkdir()
    for name in names:
        (segments / name).write_bytes(WalArchiver(world["repo"]).read(name))

    def fresh() -> tuple[Path, Repository]:
        n = next(cycle)
        return _fake_pgdata(tmp_path / f"data{n}", segments, names), new_repo(n)

    def archive_one(
        data: Path, repo: Repository, kill_after: float | None = None, probe: bool = False
    ) -> Outcome | None:
        ready = spool_mod.ready_files(str(data / "pg_wal"))
        if not ready:
            return None
        name = ready[0]
        cmd = ["/bin/sh", "-c", pg_substitute(archive_command(repo.url), f"pg_wal/{name}", name)]
        probe_fn = (lambda: repo.list_keys()) if probe else None
        res = run(cmd, kill_after=kill_after, cwd=data, env=env, probe=probe_fn, group=True)
        if res.code == 0:
            status = data / "pg_wal" / "archive_status"
            os.replace(status / f"{name}.ready", status / f"{name}.done")
        return res

    def acked(data: Path) -> set[str]:
        return {p.name[: -len(".done")] for p in (data / "pg_wal" / "archive_status").glob("*.done")}

    measured = None
    for _ in range(2):  # the first run warms the caches up; the second is measured
        data, repo = fresh()
        measured = archive_one(data, repo, probe=True)
    assert measured is not None

    def body(delay: float) -> str | None:
        data, repo = fresh()
        checker = Checker(repo, env)
        res = archive_one(data, repo, kill_after=delay)
        assert res is not None
        if not res.killed:
            res.check()
            return None
        checker.wal_durable(acked(data))
        vouched = checker.markers(data / "pgrecovery_spool")
        checker.no_corrupt_wal()
        stored = sum(len(WalArchiver(repo).index(t)) for t in WalArchiver(repo).timelines())
        phase = "before storing anything"
        if stored:
            phase = f"after storing {'all' if stored == len(names) else 'some'}"
        if vouched:
            phase += ", markers written"
        if repo.capabilities.local and any(
            Path(p).name.startswith(".") and p.endswith(".tmp") for p in tree(Path(repo.root))
        ):
            phase += " (temporary object left in the repository)"
        # PostgreSQL retries the same file, then goes on with the others: every call succeeds
        while (again := archive_one(data, repo)) is not None:
            again.check()
        assert acked(data) == set(names)
        checker.wal_durable(acked(data))
        checker.no_corrupt_wal()
        checker.wal_verify_clean()
        return phase

    for delay in sweep.delays(measured):
        sweep.point(delay, body)
    sweep.finish(capsys)


def _prefetchers(spool: Path) -> list[int]:
    """Pids of the processes prefetching into ``spool``: wal-prefetch processes (detached by the wal-fetch calls
    of this test) and the WAL worker, which prefetches in a thread once it runs."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (b"wal-prefetch" in argv or b"wal-worker" in argv) and str(spool).encode() in argv:
            found.append(int(entry))
    return found


class Recovery:
    """The test plays a recovering server: restore_command for one segment after the other, RECOVERYXLOG removed
    before each call (as PostgreSQL does), the file checked against the archive after each delivery."""

    def __init__(self, world: dict[str, Any], where: Path) -> None:
        self.url = world["url"]
        self.env = world.get("env") or {}  # what restore_command needs to reach the repository (object stores)
        self.names: list[str] = world["segments"]
        archiver = WalArchiver(world["repo"])
        self.digests = {n: archiver.find(n).sha256 for n in self.names}  # type: ignore[union-attr]
        self.archiver = archiver
        self.target = where
        (where / "pg_wal").mkdir(parents=True)
        self.spool = where / "pgrecovery_spool"
        self.dest = where / "pg_wal" / "RECOVERYXLOG"
        self.position = 0

    def next_name(self) -> str:
        name = self.names[self.position % len(self.names)]
        self.position += 1
        return name

    def fetch(self, name: str, kill_after: float | None = None, probe: bool = False) -> Outcome:
        self.dest.unlink(missing_ok=True)
        cmd = ["/bin/sh", "-c", pg_substitute(restore_command(self.url), "pg_wal/RECOVERYXLOG", name)]
        probe_fn = self.pg_wal if probe else None
        return run(cmd, kill_after=kill_after, cwd=self.target, env=self.env, probe=probe_fn, group=True)

    def pg_wal(self) -> list[str]:
        return sorted(os.listdir(self.target / "pg_wal"))

    def queue(self) -> list[str]:
        return sorted(os.listdir(self.spool / "prefetch")) if (self.spool / "prefetch").is_dir() else []

    def delivered_right(self, name: str) -> None:
        got = hashlib.sha256(self.dest.read_bytes()).hexdigest()
        assert got == self.digest(name), f"RECOVERYXLOG for {name} has the wrong content"

    def digest(self, name: str) -> str:
        if name not in self.digests:  # archived since the setup
            obj = self.archiver.find(name)
            assert obj is not None
            self.digests[name] = obj.sha256
        return self.digests[name]

    def queue_is_sound(self) -> None:
        """Every file the queue offers under a WAL name is complete and right (partial downloads are hidden)."""
        for n in self.queue():
            if wn.is_wal_file(n):
                try:
                    got = hashlib.sha256((self.spool / "prefetch" / n).read_bytes()).hexdigest()
                except FileNotFoundError:
                    continue  # handed over, or swept by the running prefetcher, meanwhile
                assert got == self.digest(n), f"prefetched {n} is not the archived file"

    def idle(self) -> None:
        _wait_until(lambda: not _prefetchers(self.spool), 60, "the prefetcher to end")

    def start_over(self) -> None:
        """The prefetcher idle and its queue empty: the next fetch downloads itself and starts a prefetcher."""
        self.idle()
        self.archiver.clear_prefetched(str(self.spool))

    def goes_on(self, count: int = 2) -> None:
        for _ in range(count):
            following = self.next_name()
            self.fetch(following).check()
            self.delivered_right(following)
        self.queue_is_sound()


def test_wal_fetch_survives_kill_9(world: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _wal_fetch_sweep(world, tmp_path, capsys)


def _wal_fetch_sweep(
    world: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str], sweep: Sweep | None = None
) -> None:
    """wal-fetch killed while it downloads (the queue is empty, as when recovery outruns the prefetcher)."""
    sweep = sweep or Sweep("wal-fetch")
    rec = Recovery(world, tmp_path / "recovery")
    for _ in range(2):  # the first run warms the caches up; the second is measured
        rec.start_over()
        measured = rec.fetch(rec.next_name(), probe=True)

    def body(delay: float) -> str | None:
        rec.start_over()
        name = rec.next_name()
        res = rec.fetch(name, kill_after=delay)
        if not res.killed:
            res.check()
            rec.delivered_right(name)
            return None
        phase = "after delivering" if rec.dest.exists() else "before delivering"
        if rec.dest.exists():
            rec.delivered_right(name)  # complete and right, or absent
        if [n for n in rec.pg_wal() if n != "RECOVERYXLOG"]:
            phase += " (temporary file left in pg_wal)"
        rec.queue_is_sound()
        rec.fetch(name).check()  # PostgreSQL asks again
        rec.delivered_right(name)
        assert rec.pg_wal() == ["RECOVERYXLOG"], f"pg_wal holds more than the delivered file: {rec.pg_wal()}"
        rec.goes_on()
        return phase

    for delay in sweep.delays(measured):
        sweep.point(delay, body)
    rec.idle()
    sweep.finish(capsys)


def test_wal_prefetch_survives_kill_9(
    world: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _wal_prefetch_sweep(world, tmp_path, capsys)


def _wal_prefetch_sweep(
    world: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str], sweep: Sweep | None = None
) -> None:
    """The detached prefetcher (started by wal-fetch) killed while it fills the queue."""
    sweep = sweep or Sweep("wal-prefetch")
    rec = Recovery(world, tmp_path / "recovery")

    def started() -> None:
        rec.start_over()
        name = rec.next_name()
        rec.fetch(name).check()
        rec.delivered_right(name)

    started()
    t0, initial, work_start = time.monotonic(), rec.queue(), None
    while _prefetchers(rec.spool):
        if work_start is None and rec.queue() != initial:
            work_start = time.monotonic() - t0
        time.sleep(0.005)
    duration = time.monotonic() - t0
    assert rec.queue(), "the prefetcher queued nothing"
    measured = Outcome(["wal-prefetch"], 0, False, duration, "", "", work_start)

    def body(delay: float) -> str | None:
        started()
        time.sleep(delay)
        victims = _prefetchers(rec.spool)
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        if not victims:
            return None
        rec.idle()
        queued = [n for n in rec.queue() if wn.is_wal_file(n)]
        phase = f"{len(queued)} segment(s) queued" if queued else "nothing queued yet"
        if any(n.endswith(".tmp") for n in rec.queue()):
            phase += ", partial download left"
        rec.queue_is_sound()
        rec.goes_on(3)  # the queue serves what it has, wal-fetch downloads the rest, a new prefetcher starts
        return phase

    for delay in sweep.delays(measured):
        sweep.point(delay, body)
    rec.idle()
    sweep.finish(capsys)


# -- copy, expire -----------------------------------------------------------------------------------------------


def _changes(repo: Repository) -> Callable[[], object]:
    """A probe that changes as soon as anything is written to ``repo``: its tree on local disk (temporary files
    too), its listing elsewhere."""
    if repo.capabilities.local:
        return lambda: tree(Path(repo.root))
    return repo.list_keys


def _contents(repo: Repository) -> tuple[dict[str, tuple[int, str]], list[str]]:
    """Everything stored under ``repo`` (temporary files too) with its size and modification time, and its
    unfinished uploads: any write there changes this."""
    repo.fs.invalidate_cache()
    found = repo.fs.find(repo.root, detail=True)
    stored = {
        path: (int(info["size"]), modified_of(info, path, repo.display_url).isoformat()) for path, info in found.items()
    }
    return stored, sorted(u.key for u in repo.unfinished_uploads(0.0))


def test_copy_survives_kill_9(world: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    counter = iter(range(10**6))
    source = Repository(f"file://{world['snapshot']}")
    _copy_sweep(world, source, lambda: Repository(f"file://{tmp_path / f'copy{next(counter)}'}"), capsys)


def _copy_sweep(
    world: dict[str, Any],
    source: Repository,
    new_target: Callable[[], Repository],
    capsys: pytest.CaptureFixture[str],
    sweep: Sweep | None = None,
    backups: Sequence[str] = (),
) -> None:
    """`copy` killed; each kill point copies ``source`` (only ``backups``, with every WAL file, when given) into a
    new repository (``new_target``), and ``world["env"]`` reaches both. The source stays exactly as it was:
    nothing written there, nothing left unfinished."""
    sweep = sweep or Sweep("copy")
    env = world.get("env") or {}
    wanted = [m.id for m in source.backups() if not backups or m.id in backups]
    before = _contents(source)

    def copy(dest: Repository) -> list[str]:
        return cli(source.url, "copy", "--to", dest.url, *(a for b in backups for a in ("--backup", b)))

    first = new_target()
    measured = run(copy(first), env=env, probe=_changes(first))

    def body(delay: float) -> str | None:
        dest = new_target()
        res = run(copy(dest), kill_after=delay, env=env)
        if not res.killed:
            res.check()
            return None
        assert _contents(source) == before, f"the killed copy changed its source {source.display_url}"
        checker = Checker(dest, env)
        listed = checker.listed_backups()
        checker.no_corrupt_wal()
        left = {x.id for x in leftovers(dest)}
        phase = f"{len(listed)} of {len(wanted)} backups there" + (", one half-copied" if left else "")
        if dest.unfinished_uploads(0.0):
            phase += ", an upload left unfinished"
        checker.clean_removes(left)
        run(copy(dest), env=env).check()
        assert checker.listed_backups() == wanted
        checker.wal_verify_clean()
        assert _contents(source) == before, f"copying again changed the source {source.display_url}"
        return phase

    for delay in sweep.delays(measured):
        sweep.point(delay, body)
    sweep.finish(capsys)


def test_expire_survives_kill_9(world: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    counter = iter(range(10**6))

    def fresh() -> Repository:
        return Repository(f"file://{_copy_repo(world['snapshot'], tmp_path / f'exp{next(counter)}')}")

    _expire_sweep(world, fresh, capsys)


def _expire_sweep(
    world: dict[str, Any],
    fresh: Callable[[], Repository],
    capsys: pytest.CaptureFixture[str],
    sweep: Sweep | None = None,
) -> None:
    """`expire --keep-last 1` killed; each kill point expires a new copy of the same repository (``fresh``), which
    ``world["env"]`` reaches."""
    sweep = sweep or Sweep("expire")
    env = world.get("env") or {}
    args = ["expire", "--keep-last", "1", "--json"]

    def marked(repo: Repository) -> list[str]:
        return [k.split("/")[1] for k in repo.list_keys(BACKUPS) if k.endswith(f"/{EXPIRED}")]

    reference = fresh()
    measured = run(cli(reference.url, *args), env=env, probe=_changes(reference)).check()
    kept = [m.id for m in reference.backups()]
    assert set(json.loads(measured.out)["deleted"]), "the expire sweep needs something to expire"
    wal_kept = WalArchiver(reference).list_archived()

    def body(delay: float) -> str | None:
        repo = fresh()
        before = [m.id for m in repo.backups()]
        res = run(cli(repo.url, *args), kill_after=delay, env=env)
        if not res.killed:
            res.check()
            return None
        checker = Checker(repo, env)
        listed = checker.listed_backups()
        checker.no_corrupt_wal()
        checker.wal_verify_clean()  # WAL goes oldest first: never a gap
        phase = "before unlisting" if listed == before else "after unlisting"
        if marked(repo):
            phase += ", data deletion interrupted"
        elif WalArchiver(repo).list_archived() == wal_kept and listed == kept:
            phase = "after everything was deleted"
        run(cli(repo.url, *args), env=env).check()
        assert checker.listed_backups(again=True) == kept
        assert WalArchiver(repo).list_archived() == wal_kept
        checker.clean_removes()
        assert repo.children(BACKUPS) == sorted(kept), "an expired backup's objects remain"
        assert not marked(repo), "a kept backup is marked expired"
        checker.wal_verify_clean()
        return phase

    for delay in sweep.delays(measured):
        sweep.point(delay, body)
    sweep.finish(capsys)


# -- restore ----------------------------------------------------------------------------------------------------


def test_restore_base_survives_kill_9(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """Kill `restore base` of an incremental backup (files from two backups)."""
    base = _owned_tmpdir("pgrecovery-crash-restore-")
    try:
        _restore_base_sweep(world, world["inc"].id, base / "data", capsys)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _restore_base_sweep(
    world: dict[str, Any], backup: str, pgdata: Path, capsys: pytest.CaptureFixture[str], sweep: Sweep | None = None
) -> None:
    """Kill `restore base` of ``backup`` into ``pgdata`` (its parent belongs to the server's user); rerun with
    --overwrite into the same directory; the recovered cluster, whose restore_command reaches the repository
    through ``world["env"]``, holds exactly the source's data (``world["source"]``)."""
    sweep = sweep or Sweep("restore base")
    env = world.get("env") or {}
    args = ["restore", "base", backup, "--pgdata", str(pgdata), "--overwrite", "--target-immediate", "--no-archive"]
    try:
        measured = run(cli(world["url"], *args), env=env, probe=lambda: tree(pgdata))

        def body(delay: float) -> str | None:
            res = run(cli(world["url"], *args), kill_after=delay, env=env)
            if not res.killed:
                res.check()
                return None
            phase = "before writing files"
            if pgdata.exists() and any(pgdata.iterdir()):
                phase = "configured" if (pgdata / "recovery.signal").exists() else "while writing files"
            run(cli(world["url"], *args), env=env).check()
            restored = LocalCluster(data_dir=pgdata)
            try:
                restored.start(env=env)
                _wait_until(lambda: not restored.query("select pg_is_in_recovery()")[0][0], 120, "the end of recovery")
                got = _fingerprint(restored, "crash")
            finally:
                restored.stop()
            assert got == world["source"], f"restored data differ: {got} != {world['source']}"
            return phase

        for delay in sweep.delays(measured):
            sweep.point(delay, body)
    finally:
        cluster = LocalCluster(data_dir=pgdata)
        if cluster.is_running():
            cluster.stop(mode="immediate")
    sweep.finish(capsys)


def test_restore_logical_survives_kill_9(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    _restore_logical_sweep(world, capsys)


def _restore_logical_sweep(
    world: dict[str, Any], capsys: pytest.CaptureFixture[str], sweep: Sweep | None = None
) -> None:
    """Kill `restore logical --create` of the newest of ``world["logical"]`` into ``world["pg"]``; the rerun into
    the same database (--clean --if-exists when the killed run had created it) succeeds and the data equal the
    source (``world["source"]``)."""
    sweep = sweep or Sweep("restore logical")
    env = world.get("env") or {}
    pg: LocalCluster = world["pg"]
    backup = world["logical"][-1].id
    dbname = "crash_restored"
    target = pg.conninfo(dbname)
    create = ["restore", "logical", backup, "--dbname", target, "--create"]
    into = ["restore", "logical", backup, "--dbname", target, "--clean", "--if-exists"]

    def drop() -> None:
        pg.execute(f'drop database if exists "{dbname}" with (force)')

    def exists() -> bool:
        return bool(pg.query("select 1 from pg_database where datname = %s", (dbname,)))

    measured = run(cli(world["url"], *create), env=env, probe=exists)
    assert _fingerprint(pg, dbname) == world["source"]
    refused = run(cli(world["url"], *create), env=env)
    assert refused.code != 0
    assert "already exists" in refused.err, refused.err
    drop()

    def body(delay: float) -> str | None:
        try:
            res = run(cli(world["url"], *create), kill_after=delay, env={**env, "PGAPPNAME": "sweep-restore"})
            if not res.killed:
                res.check()
                return None
            _wait_until(lambda: _sessions(pg, "sweep-restore") == 0, 30, "the killed restore's sessions to end")
            phase = "after creating the database" if exists() else "before creating the database"
            run(cli(world["url"], *(into if exists() else create)), env=env).check()
            got = _fingerprint(pg, dbname)
            assert got == world["source"], f"restored data differ: {got} != {world['source']}"
            return phase
        finally:
            drop()

    for delay in sweep.delays(measured):
        sweep.point(delay, body)
    sweep.finish(capsys)


def test_the_next_delivery_removes_what_a_killed_one_left_in_pg_wal(tmp_path: Path) -> None:
    """Regression: a wal-fetch killed while downloading (SIGKILL, or the SIGTERM PostgreSQL sends at shutdown)
    left ``.RECOVERYXLOG.<hex>.tmp`` in pg_wal for good. The next delivery to the same place removes such files,
    through the library and through the spool's fast path, and nothing else."""
    wal = tmp_path / "data" / "pg_wal"
    wal.mkdir(parents=True)
    segment = wal / "000000010000000000000001"
    segment.write_bytes(os.urandom(1 << 16))
    repo = Repository(f"file://{tmp_path / 'repo'}")
    archiver = WalArchiver(repo, prefetch=0)
    archiver.push(segment)
    dest = wal / "RECOVERYXLOG"
    keep = [wal / ".RECOVERYHISTORY.0badf00d.tmp", wal / ".RECOVERYXLOG.tmp", wal / "000000010000000000000002"]
    for p in keep:
        p.write_bytes(b"kept")

    def leave_stale() -> list[Path]:
        stale = [wal / ".RECOVERYXLOG.0badf00d.tmp", wal / ".RECOVERYXLOG.1234abcd.tmp"]
        for p in stale:
            p.write_bytes(b"half a segment")
        return stale

    stale = leave_stale()
    assert archiver.fetch(segment.name, dest)
    assert not [p for p in stale if p.exists()]
    assert dest.read_bytes() == segment.read_bytes()
    # the fast path: a segment handed over from the prefetch queue without loading the library
    spool = tmp_path / "data" / "pgrecovery_spool"
    spool_mod.set_source(str(spool), spool_mod.repo_tag(repo.url))
    shutil.copy(segment, spool / "prefetch" / segment.name)
    dest.unlink()
    stale = leave_stale()
    argv = ["wal-fetch", "--repo", repo.url, "--no-prefetch", segment.name, str(dest)]
    assert fastpath.fast_command(argv) == 0
    assert not [p for p in stale if p.exists()]
    assert dest.read_bytes() == segment.read_bytes()
    assert all(p.read_bytes() == b"kept" for p in keep)


def test_results_file_is_ignored_by_git() -> None:
    """The results land in tests/.results/ unless told otherwise, and git ignores that directory."""
    gitignore = (HERE.parent.parent / ".gitignore").read_text().splitlines()
    assert "tests/.results/" in gitignore
