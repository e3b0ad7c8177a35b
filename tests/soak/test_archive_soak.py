"""Soak: WAL archiving under a sustained write load with storage faults, then a PITR to the last second.

A cluster archives into a file:// repository through `faulty_archive.py` (calls refused, answers lost, pushes
killed mid-upload) while ``pgbench -N`` writes for ``PGRECOVERY_SOAK_SECONDS`` (default 600) and, now and then,
the repository's WAL directory turns read-only for a few seconds (an outage: every push fails and PostgreSQL
retries). Every second the ``.ready`` backlog in ``pg_wal/archive_status`` is sampled. Afterwards:

* the backlog stayed under ``PGRECOVERY_SOAK_MAX_READY`` (default 128) and drains to nothing;
* the archive has every segment from the base backup to the last one, each matching its checksum, and no
  half-written object shows as archived;
* a recovery to the last second of the load gives the pgbench tables exactly as they were then.

Runs only with ``PGRECOVERY_SOAK=1`` (``nox -s soak``). Figures go to ``soak_archive.json`` in
``$PGRECOVERY_RELIABILITY_OUT`` (default ``tests/.results/``) and to the terminal.
"""

from __future__ import annotations

import json
import os
import pwd
import random
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from pgtesting import archive_settings, wait_archived
from pgtesting import owned_tmpdir as _owned_tmpdir

from pgrecovery import BaseBackup, LocalCluster, RecoveryPlan, RecoveryTarget, Repository, pgtools
from pgrecovery.wal.archiver import WalArchiver, archive_command, timeline_dir

SOAK = os.environ.get("PGRECOVERY_SOAK") == "1"
SECONDS = int(os.environ.get("PGRECOVERY_SOAK_SECONDS", "600"))
MAX_READY = int(os.environ.get("PGRECOVERY_SOAK_MAX_READY", "128"))
RATE = os.environ.get("PGRECOVERY_SOAK_RATE")  # pgbench -R (transactions per second); unthrottled by default
SCALE = int(os.environ.get("PGRECOVERY_SOAK_SCALE", "10"))
RESULTS = Path(os.environ.get("PGRECOVERY_RELIABILITY_OUT") or Path(__file__).resolve().parents[1] / ".results")
FAULTS = {"refuse": 0.04, "lost": 0.04, "kill": 0.04, "kill_within": 0.3}

pytestmark = [
    pytest.mark.soak,
    pytest.mark.skipif(not SOAK, reason="the long soak profile: set PGRECOVERY_SOAK=1 (nox -s soak)"),
]

# The pgbench tables' state: sums and counts, and a digest of every account's balance.
FINGERPRINT = """
select (select count(*) from pgbench_accounts), (select sum(abalance) from pgbench_accounts),
       (select md5(string_agg(abalance::text, ',' order by aid)) from pgbench_accounts),
       (select sum(bbalance) from pgbench_branches), (select sum(tbalance) from pgbench_tellers),
       (select count(*) from pgbench_history), (select coalesce(sum(delta), 0) from pgbench_history),
       (select coalesce(sum(aid), 0) from pgbench_history)
"""


def _give(path: Path) -> None:
    if os.getuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(path, pw.pw_uid, pw.pw_gid)


class Sampler(threading.Thread):
    """Counts ``.ready`` files every second until stopped."""

    def __init__(self, pgdata: Path) -> None:
        super().__init__(daemon=True)
        self.status = pgdata / "pg_wal" / "archive_status"
        self.samples: list[tuple[float, int]] = []
        self.done = threading.Event()

    def count(self) -> int:
        try:
            return sum(1 for e in os.listdir(self.status) if e.endswith(".ready"))
        except OSError:
            return 0

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.done.wait(1.0):
            self.samples.append((round(time.monotonic() - t0, 1), self.count()))


class Outages(threading.Thread):
    """Makes the store unusable for 3-8 s at random moments (`outage`), until stopped."""

    def __init__(self, rng: random.Random, every: tuple[float, float]) -> None:
        super().__init__(daemon=True)
        self.rng, self.every = rng, every
        self.done = threading.Event()
        self.outages: list[float] = []

    def outage(self, seconds: float) -> None:
        raise NotImplementedError

    def run(self) -> None:
        while not self.done.wait(self.rng.uniform(*self.every)):
            length = self.rng.uniform(3, 8)
            self.outage(length)
            self.outages.append(round(length, 1))


class DirectoryOutages(Outages):
    """A local repository's WAL directory turned read-only."""

    def __init__(self, directory: Path, rng: random.Random, every: tuple[float, float]) -> None:
        super().__init__(rng, every)
        self.directory = directory

    def outage(self, seconds: float) -> None:
        mode = self.directory.stat().st_mode & 0o777
        self.directory.chmod(0o555)
        try:
            self.done.wait(seconds)
        finally:
            self.directory.chmod(mode)


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = _owned_tmpdir("pgrecovery-soak-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@dataclass
class Store:
    """Where the soak archives: the repository (this process's view), the URL and environment the server's
    archive_command uses, a thread that causes outages, and how to count half-written objects left behind."""

    name: str
    url: str
    repo: Repository
    outages: Callable[[random.Random], Outages]
    server_env: dict[str, str] = field(default_factory=dict)
    leftovers: Callable[[], int] = lambda: 0


def test_archiving_under_load_and_faults_loses_nothing(workdir: Path, request: pytest.FixtureRequest) -> None:
    repo_dir = _owned_tmpdir("pgrecovery-soak-repo-")
    wal_dir = repo_dir / timeline_dir(1)
    try:
        store = Store(
            "file",
            f"file://{repo_dir}",
            Repository(f"file://{repo_dir}"),
            lambda rng: DirectoryOutages(wal_dir, rng, _every()),
            leftovers=lambda: len([p for p in wal_dir.iterdir() if p.name.startswith(".")]),
        )
        soak(store, workdir, request)
    finally:
        shutil.rmtree(repo_dir, ignore_errors=True)


def _every() -> tuple[float, float]:
    return (min(30.0, SECONDS / 6), min(60.0, SECONDS / 3))


def soak(store: Store, workdir: Path, request: pytest.FixtureRequest) -> dict[str, Any]:
    """The soak (see the module) against ``store``; returns its figures (also reported)."""
    rng = random.Random(int(os.environ.get("PGRECOVERY_SOAK_SEED", "7")))
    url, repo = store.url, store.repo
    # the wrapper and its files live where the server's OS user can read (the checkout may be private)
    wrapper = workdir / "faulty_archive.py"
    shutil.copy(Path(__file__).with_name("faulty_archive.py"), wrapper)
    config = workdir / "faults.json"
    log = workdir / "faults.log"
    log.touch()
    _give(log)

    def set_faults(enabled: bool) -> None:
        tmp = config.with_suffix(".tmp")
        tmp.write_text(json.dumps({"command": archive_command(url), "log": str(log), "enabled": enabled, **FAULTS}))
        tmp.chmod(0o644)
        os.replace(tmp, config)

    set_faults(True)
    command = f"{shlex.quote(sys.executable)} -S {shlex.quote(str(wrapper))} {shlex.quote(str(config))} %p"
    pg = LocalCluster.temporary(
        settings=archive_settings(
            command=command,
            max_wal_size="1GB",
            checkpoint_timeout="30s",  # frequent checkpoints: full-page images, more WAL
        )
    )
    pgbench = str(pgtools.find_tool("pgbench").path)
    conn = ["-h", "127.0.0.1", "-U", "postgres"]
    recovered = workdir / "recovered"
    recovered.mkdir()
    _give(recovered)
    figures: dict[str, Any] = {
        "storage": store.name,
        "seconds": SECONDS,
        "scale": SCALE,
        "rate": RATE,
        "fault_rates": FAULTS,
    }
    try:
        pg.start(env=store.server_env)
        subprocess.run([pgbench, *conn, "-p", str(pg.port), "-i", "-q", "-s", str(SCALE), "postgres"],
                       check=True, capture_output=True)  # fmt: skip
        backup = BaseBackup(dbname=pg.conninfo()).run(repo)
        assert backup.physical is not None
        sampler = Sampler(pg.data_dir)
        outages = store.outages(rng)
        sampler.start()
        outages.start()
        t0 = time.monotonic()
        load = subprocess.run(
            [pgbench, *conn, "-p", str(pg.port), "-N", "-n", "-c", "2", "-j", "2", "-T", str(SECONDS),
             *(["-R", RATE] if RATE else []), "postgres"],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        figures["load_seconds"] = round(time.monotonic() - t0, 1)
        outages.done.set()
        outages.join()
        # the last second of the load, then a change after it that the recovery must not bring back
        with pg.connect() as c:
            expected = c.execute(FINGERPRINT).fetchone()
            time.sleep(0.05)
            target = c.execute("select clock_timestamp()").fetchone()[0]  # type: ignore[index]
            time.sleep(0.05)
            c.execute("update pgbench_branches set bbalance = bbalance + 1000000")
        set_faults(False)
        last_wal = wait_archived(pg, timeout=900)
        drained = time.monotonic()
        while sampler.count() and time.monotonic() - drained < 900:
            time.sleep(0.5)
        sampler.done.set()
        sampler.join()
        final_ready = sampler.count()
        stats = pg.query("select archived_count, failed_count from pg_stat_archiver")[0]
        pg.stop()

        faults = Counter(line.split()[0] for line in log.read_text().splitlines() if line.strip())
        archiver = WalArchiver(repo)
        report = archiver.verify(backup.physical.start_wal, check_digests=True)
        readies = [n for _, n in sampler.samples]
        figures.update(
            tps=next((round(float(ln.split()[2])) for ln in load.stdout.splitlines() if ln.startswith("tps = ")), None),
            segments_archived=report.count,
            last_segment=report.last,
            archived_count=stats[0],
            failed_attempts=stats[1],
            faults=dict(faults),
            outages=outages.outages,
            ready_max=max(readies, default=0),
            ready_mean=round(sum(readies) / len(readies), 2) if readies else 0,
            ready_final=final_ready,
            temp_files_left=store.leftovers(),
        )

        plan = RecoveryPlan(repo, RecoveryTarget.time(target))
        result = plan.run(recovered / "data", settings={"archive_mode": "off"}, timeout=3600, record_incident=False)
        figures["recovery_seconds"] = round(result.restore_seconds + result.recovery_seconds, 1)
        figures["wal_replayed"] = result.wal_restored
        back = LocalCluster(data_dir=recovered / "data", port=result.port)
        try:
            got = back.query(FINGERPRINT)[0]
        finally:
            back.stop()
        figures["pitr_matched"] = got == expected
        figures["faults"] = {**figures["faults"], **getattr(outages, "injected", {})}
        _report(request, figures)

        assert faults["refuse"] + faults["lost"] + faults["kill"] > 0, "no fault was injected"
        assert outages.outages, "no outage happened"
        assert stats[1] > 0, "PostgreSQL never saw a failed archive_command"
        assert figures["ready_max"] <= MAX_READY, f"the .ready backlog reached {figures['ready_max']}"
        assert final_ready == 0, f"{final_ready} segments still wait for archiving"
        assert report.ok, f"the archive has gaps or corrupt segments: {report.to_dict()}"
        assert report.last >= last_wal[:24], f"the archive ends at {report.last}, the server archived {last_wal}"
        assert got == expected, f"recovered {got}, the source had {expected} at {target}"
    finally:
        pg.destroy()
        LocalCluster(data_dir=recovered / "data").stop(mode="immediate")
    return figures


def _report(request: pytest.FixtureRequest, figures: dict[str, Any]) -> None:
    figures["finished_at"] = datetime.now().astimezone().isoformat(timespec="seconds")
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "soak_archive.json" if figures["storage"] == "file" else f"soak_archive_{figures['storage']}.json"
    (RESULTS / name).write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    line = (
        f"archive soak ({figures['storage']}): {figures['load_seconds']} s of pgbench ({figures['tps']} tps), "
        f"{figures['segments_archived']} segments, faults {figures['faults']}, {len(figures['outages'])} outages, "
        f".ready max {figures['ready_max']} (mean {figures['ready_mean']}), PITR matched: {figures['pitr_matched']}"
    )
    _show(request, line)


def _show(request: pytest.FixtureRequest, line: str) -> None:
    """Write ``line`` to the terminal past pytest's output capture."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        print(line)
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(line)
