"""The object store itself restarted while PostgreSQL archives into it and while a base backup is written to it.

Each store gets emulator instances of its own (never the session-wide ones other tests share), keeping their
objects on disk so that a restart keeps them: Azurite with ``--location``, fake-gcs-server with ``-backend
filesystem -filesystem-root``. A real cluster archives into a repository there (its archive_command reaching the
store through the environment, with the drivers' default retries), and:

1. while it generates WAL and a base backup (default retries) is uploading a bundle (a part sent, more to come),
   the store is stopped and started again on the same port DOWN seconds later. Archiving: every segment the
   server reports archived (``archive_status/*.done``, ``pg_stat_archiver``) is in the repository, every archived
   file is stored once and reads back whole matching the sha256 in its name (what ``wal-verify --check-digests``
   checks, here in parallel), every archive-ahead marker names a stored file, the archive has no gap, and the
   archiver catches up with nothing left ``.ready``;
2. the backup either completes (within a bound after the store is back), is listed and verifies, or fails with
   one line naming the store and the object and is not listed, and its rerun (the CLI) succeeds. Then a backup
   with short retries (ours and the drivers') meets a store that goes down mid-bundle and stays down: it fails
   within a bound, its retries logged, with one line naming the store, the object and the real cause, and is not
   listed. Once the store is back, a recovery from the first complete backup, through the WAL archived across
   both outages, matches the source row for row.

How each store is stopped: fake-gcs-server gets SIGKILL (its filesystem backend writes each object before it
answers, but in two steps: the content, renamed into place, then its metadata in an extended attribute). A kill
between the two leaves a file without metadata, an object the server never acknowledged, and after the restart every
listing of that bucket fails, answered 404 (seen once in a full run: the whole archive looked empty). GCS itself
creates an object at once or not at all, so after the kill such files (and renameio's temporary files) are removed,
as GCS would never have shown them; their number is printed. Azurite gets SIGTERM (SIGKILL after 10 s): it keeps its
metadata in LokiJS, saved to disk every 5 s (``autosaveInterval: 5000``, not configurable), so a SIGKILL forgets
blobs it acknowledged in the last seconds (measured: five blobs written and acknowledged, SIGKILL within 5 s, none
listed after the restart). That is the emulator losing acknowledged writes, which no client can notice or repair;
its shutdown on SIGTERM saves them.

S3 is not here: moto's server keeps everything in memory (no option of ``python -m moto.server`` persists it).
Its request recorder (``MOTO_ENABLE_RECORDING``, replayed through ``/moto-api/recorder/replay-recording``) is no
substitute: requests are logged before they run and replayed blind, and a multipart upload's id comes from
``os.urandom``, so after a replay the parts go to an upload that no longer exists (measured: a 15 MiB object
written in three parts and acknowledged was gone after SIGKILL, restart and replay; a one-request object came
back). For S3 the fault proxy's refused connections (tests/storage/test_network_faults.py) stand in for a restart.

The backup that meets the restart ends differently by store, as each store keeps an unfinished upload: Azurite
keeps the staged blocks (the upload goes on once the SDK retries, 15 s later), fake-gcs-server keeps resumable
sessions in memory (the next chunk finds none: the backup fails, naming the bundle, and is rerun).

Bounded: with the drivers' default retries under pgrecovery's own (5 attempts), one ``wal-push`` against a store
that stays down gave up after 45 s (S3), 172 s (GCS: gcsfs retries each request 6 times, 1 to 16 s apart) and
434 s (Azure: the SDK waits 15, 18, 24 s between its tries), each retry logged at INFO (``-v``) and the error
naming the object and the store (measured by hand; too slow for the suite). Here the store that stays down
meets short retries instead.

The figures (restarts, segments archived during the restart window, segments lost, backup outcomes) are printed.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pgtesting import archive_settings
from pgtesting import wait_archived as _wait_archived
from storage_backends import PART_SIZE, Backend

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))  # the crash sweep's checks
from test_crash_sweep import Checker, _acked_by_server, _crash_database, _fingerprint, cli

from pgrecovery import BaseBackup, LocalCluster, Repository, StorageError
from pgrecovery import _walnames as wn
from pgrecovery.catalog import clean_leftovers, leftovers
from pgrecovery.storage import RetryPolicy
from pgrecovery.wal._layout import check_object
from pgrecovery.wal.archiver import WalArchiver

STORES = ["azure", "gcs"]  # the emulators that keep their objects across a restart (S3: see above)
DOWN = 3.0  # seconds the store is away in a restart
ROWS = 50_000  # the crash database's table t
NOISE_MB = 24  # and incompressible rows beside it: each of the backup's two bundles goes in several parts
BACKUP_BOUND = 120.0  # a backup meeting a restart ends this soon after the store is back (Azure's SDK waits 15 s)
SHORT = RetryPolicy(attempts=3, base_delay=0.05, max_delay=0.2)
FAILURE_BOUND = 30.0  # a backup with SHORT retries (drivers' own retries cut too) fails this soon after the kill


class Store:
    """An emulator of our own whose objects survive it: stopped (see the docstring for how) and started again on
    the same port, where the clients (this process, the server's archive_command) expect it."""

    def __init__(self, emulator: Any) -> None:
        self.emulator = emulator
        self.server = emulator.start()
        self.port = self.server.port
        self.restarts = 0
        self.stops: list[str] = []
        self.unfinished = 0  # fake-gcs-server's objects cut between content and metadata by a kill

    def stop(self) -> None:
        proc = self.server.proc
        if self.emulator.name == "azure":
            proc.send_signal(signal.SIGTERM)  # its shutdown saves the metadata a SIGKILL would lose
            try:
                proc.wait(10)
                self.stops.append("SIGTERM")
                return
            except subprocess.TimeoutExpired:
                pass
        proc.kill()
        proc.wait()
        self.stops.append("SIGKILL")
        if self.emulator.name == "gcs":
            self.unfinished += _drop_unacknowledged(self.emulator.data)

    def start(self) -> None:
        self.server = self.emulator.start(port=self.port)
        self.restarts += 1

    def close(self) -> None:
        if self.server.proc.poll() is None:
            self.server.stop()


def _drop_unacknowledged(root: Path) -> int:
    """Remove the files under fake-gcs-server's filesystem root that have no metadata attribute: objects it was
    writing when killed, which it never acknowledged (see the docstring). Returns how many."""
    dropped = 0
    for path in root.rglob("*"):
        if not path.is_file() or path.name.endswith((".bucketMetadata", ".metadata")):
            continue
        # the metadata is an extended attribute where the filesystem has them, else a ".metadata" file beside
        if "user.metadata" not in os.listxattr(path) and not path.with_name(path.name + ".metadata").exists():
            path.unlink()
            dropped += 1
    return dropped


@pytest.fixture(scope="module", params=STORES)
def world(request: pytest.FixtureRequest, emulators: Callable[..., Any]) -> Iterator[dict[str, Any]]:
    """A store emulator of the module's own (objects on disk), a repository on it, and a cluster archiving there
    with the ``crash`` database (see test_crash_sweep.py) filled."""
    workdir = Path(tempfile.mkdtemp(prefix=f"pgrecovery-restart-{request.param}-"))
    store = pg = None
    try:
        store = Store(emulators(request.param, workdir, data=workdir / "objects"))
        backend: Backend = store.emulator.backend(store.server, f"pgr-{uuid.uuid4().hex[:12]}")
        backend.fs().mkdir(backend.bucket)
        prefix = f"restart-{uuid.uuid4().hex[:10]}"
        url = backend.url(prefix)
        repo = backend.repo(prefix)
        pg = LocalCluster.temporary(settings=archive_settings(url, fsync=False, max_connections=40))
        pg.start(env=backend.env)
        crash = _crash_database(pg, ROWS)
        with pg.connect("crash") as conn:
            conn.execute("create table noise (i int primary key, b bytea not null)")
            with conn.cursor().copy("copy noise (i, b) from stdin") as copy:
                for i in range(NOISE_MB * 16):
                    copy.write_row((i, os.urandom(64 << 10)))
        _wait_archived(pg)
        yield {
            "name": request.param,
            "store": store,
            "backend": backend,
            "url": url,
            "prefix": prefix,
            "repo": repo,
            "pg": pg,
            "crash": crash,
            "checker": Checker(repo, dict(backend.env)),
            "report": {},
        }
    finally:
        if pg is not None:
            pg.destroy()
        if store is not None:
            store.close()
        shutil.rmtree(workdir, ignore_errors=True)


# -- the restart --------------------------------------------------------------------------------------------


class Watcher(threading.Thread):
    """Rows and WAL switches on the source (a new segment every ``pause`` seconds) until ``halt``; until ``end``,
    when each WAL file is first seen waiting (``.ready``) and archived (``.done``, or pg_stat_archiver's last):
    PostgreSQL counts a file archived from then on (``.done`` files go at checkpoints, hence the watch)."""

    def __init__(self, pg: LocalCluster, pause: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pg, self.pause = pg, pause
        self.ready: dict[str, float] = {}
        self.done: dict[str, float] = {}
        self.halt, self.end = threading.Event(), threading.Event()
        self.error: BaseException | None = None

    def look(self) -> None:
        now = time.monotonic()
        for name in _acked_by_server(self.pg):
            self.done.setdefault(name, now)
        for path in (self.pg.data_dir / "pg_wal" / "archive_status").glob("*.ready"):
            self.ready.setdefault(path.name[: -len(".ready")], now)

    def run(self) -> None:
        row = 10_000_000
        try:
            with self.pg.connect("crash") as conn:
                while not self.end.is_set():
                    if not self.halt.is_set():
                        conn.execute(
                            "insert into t select i, md5(i::text) from generate_series(%s, %s) i", (row, row + 99)
                        )
                        row += 100
                        conn.execute("select pg_switch_wal()")
                    self.look()
                    time.sleep(self.pause)
            self.look()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e


def _listed(repo: Repository) -> set[str]:
    return {m.id for m in repo.backups("base")}


def _stop_mid_bundle(repo: Repository, store: Store, patch: pytest.MonkeyPatch, *, down: float | None) -> list[float]:
    """Make a base backup into ``repo`` stop the store (once, from the writing thread) as soon as one of its
    bundles has more than a part written: that bundle's upload (S3 multipart, Azure blocks, GCS resumable
    session) has started, with more to send. ``down``: start the store again that many seconds later (None: it
    stays down). Returns where the time of the stop goes."""
    stopped: list[float] = []
    lock = threading.Lock()
    writer = type(repo).writer

    def stopping_writer(self: Repository, key: str, *args: Any, **kwargs: Any) -> Any:
        made = writer(self, key, *args, **kwargs)
        if self is not repo or "/data/bundle-" not in key:
            return made
        write, sent = made.write, [0]

        def counted(data: Any) -> None:
            write(data)
            sent[0] += len(data)
            with lock:
                if sent[0] > repo.part_size and not stopped:
                    store.stop()
                    stopped.append(time.monotonic())
                    if down is not None:
                        threading.Timer(down, store.start).start()

        made.write = counted
        return made

    patch.setattr(type(repo), "writer", stopping_writer)
    return stopped


class Records(logging.Handler):
    """The log records of ``logger`` (INFO and up) while in a ``with`` block."""

    def __init__(self, logger: str) -> None:
        super().__init__(logging.INFO)
        self.logger = logging.getLogger(logger)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def retries(self) -> list[str]:
        return [r.getMessage() for r in self.records if "retrying in" in r.getMessage()]

    def __enter__(self) -> Records:
        self.level = self.logger.level
        self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self.level)


def _backup_in_thread(repo: Repository, pg: LocalCluster) -> tuple[threading.Thread, dict[str, Any]]:
    """`BaseBackup` of ``pg`` into ``repo`` in a thread; the dict gets its manifest or error, and when it ended."""
    outcome: dict[str, Any] = {"started": time.monotonic()}

    def backup() -> None:
        try:
            outcome["manifest"] = BaseBackup(dbname=pg.conninfo()).run(repo)
        except BaseException as e:  # noqa: BLE001 - examined by the test
            outcome["error"] = e
        outcome["ended"] = time.monotonic()

    thread = threading.Thread(target=backup, daemon=True)
    thread.start()
    return thread, outcome


def _archiver_counts(pg: LocalCluster) -> tuple[int, int]:
    archived, failed = pg.query("select archived_count, failed_count from pg_stat_archiver")[0]
    return int(archived), int(failed)


@pytest.fixture(scope="module")
def restart(world: dict[str, Any]) -> dict[str, Any]:
    """The store restarts (away for DOWN seconds) while the source generates WAL and a base backup (default
    retries) is writing its bundles: the stop comes once a bundle's upload has started; the WAL goes on for a
    second after the store is back. Returns what was seen."""
    pg: LocalCluster = world["pg"]
    store: Store = world["store"]
    repo: Repository = world["repo"]
    (first,) = pg.query("select pg_walfile_name(pg_current_wal_lsn())")[0]
    counts_before = _archiver_counts(pg)
    before = _listed(repo)
    watcher = Watcher(pg)
    with pytest.MonkeyPatch.context() as patch, Records("pgrecovery") as records:
        stopped = _stop_mid_bundle(repo, store, patch, down=DOWN)
        watcher.start()
        try:
            time.sleep(1.0)
            thread, outcome = _backup_in_thread(repo, pg)
            _wait_until("the store to stop", lambda: bool(stopped) or not thread.is_alive())
            assert stopped, f"the backup ended before a bundle's upload started: {outcome}"
            _wait_until("the store to be back", lambda: store.restarts > 0 and store.server.proc.poll() is None)
            back = time.monotonic()
            time.sleep(1.0)
            watcher.halt.set()
            thread.join(BACKUP_BOUND + 60)
            assert not thread.is_alive(), f"the backup still runs {BACKUP_BOUND + 60} s after the store is back"
            last = _wait_archived(pg, timeout=180)  # the archiver catches up (Azure's SDK waits 15 s to retry)
            caught_up = time.monotonic()
        finally:
            watcher.halt.set()
            watcher.end.set()
            watcher.join(30)
    assert watcher.error is None, f"the source failed while the store restarted: {watcher.error!r}"
    outcome["new"] = _listed(repo) - before
    outcome["retries"] = records.retries()
    return {
        "first": str(first),
        "last": last,
        "watcher": watcher,
        "stopped": stopped[0],
        "back": back,
        "caught_up": caught_up,
        "counts": (counts_before, _archiver_counts(pg)),
        "backup": outcome,
    }


def _wait_until(what: str, predicate: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


# -- 1. archiving ------------------------------------------------------------------------------------------------


def _archive_intact(world: dict[str, Any]) -> set[str]:
    """The names of the WAL files archived, once each of them is checked (`wal-verify --check-digests` in
    parallel: Azurite takes about 0.3 s a read): one object per name, read back whole, matching the sha256 in
    its name (`ChecksumMismatch` otherwise)."""
    repo: Repository = world["repo"]
    checker: Checker = world["checker"]
    archiver = WalArchiver(repo)
    archived = {name: objs for tli in archiver.timelines() for name, objs in archiver.index(tli).items()}
    twice = {name: len(objs) for name, objs in archived.items() if len(objs) > 1}
    assert not twice, f"WAL files stored under more than one object: {twice}"
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda name: check_object(repo, archived[name][0]), set(archived) - checker.wal_ok))
    checker.wal_ok.update(archived)
    return set(archived)


def test_archiving_across_a_store_restart_loses_nothing(world: dict[str, Any], restart: dict[str, Any]) -> None:
    pg: LocalCluster = world["pg"]
    checker: Checker = world["checker"]
    watcher: Watcher = restart["watcher"]
    acked = set(watcher.done)
    left = sorted(p.name for p in (pg.data_dir / "pg_wal" / "archive_status").glob("*.ready"))
    assert not left, f"still waiting to be archived after the catch-up: {left}"

    lost = sorted(acked - _archive_intact(world))
    assert not lost, f"acknowledged to PostgreSQL but missing from {world['url']}: {lost}"
    vouched = checker.markers(pg.data_dir / "pgrecovery_spool")  # each archive-ahead marker names a stored file
    report = WalArchiver(world["repo"]).verify(restart["first"])
    assert report.ok, f"a gap after the restart: {report.to_dict()}"
    assert report.last >= restart["last"]

    stopped, back, caught_up = restart["stopped"], restart["back"], restart["caught_up"]
    segments = {n for n in set(watcher.ready) | acked if wn.is_segment(n)}
    first_seen = {n: min(watcher.ready.get(n, caught_up), watcher.done.get(n, caught_up)) for n in segments}
    while_down = sorted(n for n, t in first_seen.items() if stopped <= t <= back)
    archived_in_window = sorted(n for n in segments if watcher.done.get(n, 0) >= stopped)  # up to the catch-up
    assert set(while_down) <= acked, "a segment written while the store was away was never archived"
    assert archived_in_window, "no segment was archived between the stop and the catch-up: the restart hit nothing"
    (archived_before, failed_before), (archived_after, failed_after) = restart["counts"]
    figures = {
        "restarts": world["store"].restarts,
        "stopped_with": world["store"].stops[0],
        "unacknowledged_files_dropped": world["store"].unfinished,
        "segments_archived": len([n for n in acked if wn.is_segment(n)]),
        "written_while_down": len(while_down),
        "archived_in_restart_window": len(archived_in_window),
        "archive_command_failures": failed_after - failed_before,
        "segments_lost": len(lost),
        "vouched_by_spool_markers": len(vouched),
        "catch_up_seconds": round(caught_up - back, 1),
    }
    assert archived_after - archived_before >= len(archived_in_window)
    world["report"]["archiving"] = figures
    print(f"\n{world['name']}: archiving across a store restart: {figures}")


# -- 2. base backups -------------------------------------------------------------------------------------------


def _names_store_and_object(message: str, world: dict[str, Any]) -> None:
    assert world["url"] in message, f"the error does not name the store ({world['url']}): {message}"
    assert "'backups/" in message or "'wal/" in message, f"the error does not name the object: {message}"
    for secret in world["backend"].secrets:
        assert secret not in message


def _short_retry_repo(world: dict[str, Any]) -> Repository:
    """The repository with SHORT retries, and the driver's own retries cut where they are longer: Azure's SDK
    waits 15 s, then 18 s, 24 s before its own retries (per request, under ours)."""
    backend: Backend = world["backend"]
    if backend.name != "azure":
        return backend.repo(world["prefix"], retry_policy=SHORT)
    from adlfs import AzureBlobFileSystem
    from azure.storage.blob.aio import BlobServiceClient, ExponentialRetry

    fs = AzureBlobFileSystem(**backend.options, skip_instance_cache=True)
    retry = ExponentialRetry(initial_backoff=0, increment_base=1, retry_total=1, random_jitter_range=0)
    fs.service_client = BlobServiceClient.from_connection_string(
        backend.options["connection_string"], retry_policy=retry
    )
    return Repository(fs=fs, root=f"{backend.bucket}/{world['prefix']}", retry_policy=SHORT, part_size=PART_SIZE)


@pytest.fixture
def short_gcs_retries(world: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """gcsfs retries every request 6 times with pauses of 1, 2, 4, 8, 16 s (a class attribute bound when the class
    is made, not an option): its pauses cut to 10 ms here, in this process only."""
    if world["name"] != "gcs":
        return
    import asyncio
    import types

    import gcsfs.retry

    async def brief(seconds: float) -> None:
        await asyncio.sleep(min(seconds, 0.01))

    monkeypatch.setattr(gcsfs.retry, "asyncio", types.SimpleNamespace(sleep=brief))


def _cli_backup(world: dict[str, Any]) -> dict[str, Any]:
    """``pgrecovery backup base --json`` in its own process."""
    before = _listed(world["repo"])
    env = {**{k: v for k, v in os.environ.items() if k != "PGRECOVERY_REPO"}, **world["backend"].env}
    res = subprocess.run(
        cli(world["url"], "backup", "base", "--dbname", world["pg"].conninfo(), "--json"),
        env=env,
        capture_output=True,
        text=True,
        timeout=BACKUP_BOUND,
        check=False,
    )
    return {"code": res.returncode, "out": res.stdout, "err": res.stderr, "new": _listed(world["repo"]) - before}


def _rows(pg: LocalCluster) -> tuple[Any, ...]:
    """The crash database's rows: table t (see test_crash_sweep.FINGERPRINT) and the noise."""
    noise = pg.query("select count(*), md5(string_agg(md5(b), ',' order by i)) from noise", dbname="crash")[0]
    return (*_fingerprint(pg, "crash"), *noise)


def _no_masked_cause(message: str) -> None:
    """The cause named is the store's absence, not what a driver's file object said when written to after the
    upload had failed (which replaced it before the fix: "File not in write mode", a BufferError)."""
    for masked in ("not in write mode", "BufferError", "closed file"):
        assert masked not in message, message


def test_base_backup_across_a_store_restart(
    world: dict[str, Any],
    restart: dict[str, Any],
    short_gcs_retries: None,
    monkeypatch: pytest.MonkeyPatch,
    owned_dir: Callable[[str], Path],
) -> None:
    pg: LocalCluster = world["pg"]
    store: Store = world["store"]
    repo: Repository = world["repo"]
    checker: Checker = world["checker"]
    figures: dict[str, Any] = {}

    # (a) the backup the store restarted under (default retries): complete and verified, or a clean failure
    a = restart["backup"]
    after = a["ended"] - restart["back"]
    assert after <= BACKUP_BOUND, f"the backup took {after:.1f} s after the store was back"
    seconds = a["ended"] - a["started"]
    if "error" not in a:
        (kept,) = a["new"]
        assert a["manifest"].id == kept
        checker.listed_backups()  # verifies, and its WAL is archived
        figures["restart"] = (
            f"completed in {seconds:.1f} s ({after:.1f} s after the store was back), {len(a['retries'])} retries logged"
        )
    else:
        error = a["error"]
        assert isinstance(error, StorageError), f"not a storage error: {error!r}"
        assert not a["new"], f"a failed backup is listed: {a['new']}"
        message = str(error)
        assert "\n" not in message, message
        _names_store_and_object(message, world)
        _no_masked_cause(message)
        if "(after " in message:  # a lasting transient error: each retry before it was logged
            assert a["retries"], f"no retry was logged before: {message}"
        # removed by the backup itself (the store was back) or by `clean`; its writer, this process, is alive
        assert {x.id for x in clean_leftovers(repo, include_in_progress=True)} == {x.id for x in leftovers(repo)}
        rerun = _cli_backup(world)  # the command, as cron runs it
        assert rerun["code"] == 0, rerun["err"][-3000:]
        (kept,) = rerun["new"]
        checker.listed_backups()
        figures["restart"] = (
            f"failed {after:.1f} s after the store was back ({message}), {len(a['retries'])} retries logged; "
            "the rerun (CLI) completed"
        )

    # (b) a backup with short retries meets a store that goes down mid-bundle and stays down: it fails within a
    # bound, its retries logged, naming the store and the object
    short = _short_retry_repo(world)
    before = _listed(repo)
    with Records("pgrecovery") as records:
        stopped = _stop_mid_bundle(short, store, monkeypatch, down=None)
        thread, outcome = _backup_in_thread(short, pg)
        thread.join(FAILURE_BOUND + 60)
        if stopped:
            store.start()
    assert not thread.is_alive(), "the backup still runs against a store that is down"
    assert stopped, "the backup ended before a bundle's upload started"
    error = outcome.get("error")
    assert isinstance(error, StorageError), f"expected a StorageError, got {error!r}"
    elapsed = outcome["ended"] - stopped[0]
    assert elapsed <= FAILURE_BOUND, f"the failure came {elapsed:.1f} s after the store went down"
    message = str(error)
    assert "\n" not in message
    _names_store_and_object(message, {**world, "url": short.display_url})
    _no_masked_cause(message)
    key = message.split("'")[1]
    # every retry was logged, naming its object and the store, within the policy's attempts (at least the
    # clean-up's: it looks for the backup's manifest, in a store still down)
    retried = records.retries()
    assert retried, "no retry was logged"
    for line in retried:
        assert short.display_url in line, line
        assert f"of {SHORT.attempts})" in line, line
    if "(after " in message:  # the failure came from our retries: each one before it was logged
        assert f"(after {SHORT.attempts} attempts)" in message, message
        assert sum(key in m for m in retried) == SHORT.attempts - 1, f"retries of {key} logged: {retried}"
    assert _listed(repo) == before, "the failed backup is listed"
    # its files stay until `clean`: the store was down when it tried to remove them, and their writer (this
    # process) is alive, so clean counts them in progress; nothing of them is listed meanwhile
    left = [x for x in leftovers(repo) if x.id not in before]
    assert all(x.pid == os.getpid() for x in left), left
    assert {x.id for x in clean_leftovers(repo, include_in_progress=True)} >= {x.id for x in left}
    figures["down_for_good"] = f"failed {elapsed:.1f} s after the stop, {len(retried)} retries logged: {message}"

    # the backup kept in (a) restores to the source's rows, through the WAL archived across both outages
    source = _rows(pg)
    _wait_archived(pg, timeout=180)
    for k, v in world["backend"].env.items():  # the recovering server's restore_command reads them
        monkeypatch.setenv(k, v)
    from pgrecovery import RecoveryPlan, RecoveryTarget

    pgdata = owned_dir("pgrecovery-restart-restore-") / "data"
    result = RecoveryPlan(repo, RecoveryTarget.latest(), backup_id=kept).run(pgdata, settings={"archive_mode": "off"})
    restored = LocalCluster(data_dir=pgdata, port=result.port)
    try:
        assert _rows(restored) == source
    finally:
        restored.stop(mode="immediate")
    _archive_intact(world)  # and what was archived since, across the second outage
    report = WalArchiver(repo).verify()
    assert report.ok, f"a gap after the second outage: {report.to_dict()}"
    figures["restores_exactly"] = True
    figures["restarts"] = store.restarts
    world["report"]["backup"] = figures
    print(f"\n{world['name']}: base backup across a store restart: {figures}")


def test_a_gcs_object_cut_by_the_kill_is_dropped_not_left_to_hide_the_bucket(
    emulators: Callable[..., Any], tmp_path: Path
) -> None:
    """The emulator's half-written object (content without metadata, as a kill between its two steps leaves it)
    makes the whole bucket unlistable after a restart; `Store.stop` removes it and the acknowledged objects list
    again. Guards the repair the restart tests rely on (see the docstring)."""
    store = Store(emulators("gcs", tmp_path, data=tmp_path / "objects"))
    try:
        backend: Backend = store.emulator.backend(store.server, f"pgr-{uuid.uuid4().hex[:12]}")
        fs = backend.fs()
        fs.mkdir(backend.bucket)
        for name in ("kept", "cut"):
            fs.pipe(f"{backend.bucket}/wal/{name}", name.encode())
        cut = tmp_path / "objects" / backend.bucket / "wal" / "cut"
        if cut.with_name("cut.metadata").exists():  # a filesystem without extended attributes
            cut.with_name("cut.metadata").unlink()
        else:
            os.removexattr(cut, "user.metadata")
        fs.invalidate_cache()
        with pytest.raises(FileNotFoundError):  # the emulator answers 404 to the listing of the whole bucket
            fs.ls(f"{backend.bucket}/wal")
        store.stop()
        assert store.unfinished == 1
        assert not cut.exists()
        store.start()
        fs.invalidate_cache()
        assert [p.rsplit("/", 1)[-1] for p in fs.ls(f"{backend.bucket}/wal")] == ["kept"]
        assert fs.cat(f"{backend.bucket}/wal/kept") == b"kept"
    finally:
        store.close()
