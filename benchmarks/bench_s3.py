"""Benchmark: base backups and WAL archiving into S3 (moto's server on loopback), against a single-stream upload.

What it measures
    1. Base backup into S3. One running, archiving server (its archive_command pushes WAL to the same bucket,
       configured only through ``FSSPEC_S3_*`` variables in the server's environment). Wall-clock time of a
       complete base backup for:

       * ``pg_basebackup -D - -Ft --compress=client-zstd:1 -X none`` piped into one S3 object, uploaded as a single
         stream (s3fs writes the parts one after the other as its buffer fills) -- the baseline;
       * ``BaseBackup(workers=1)`` -- pgrecovery with one bundle, so a single upload stream too;
       * ``BaseBackup(workers=2)`` (the default) and ``BaseBackup(workers=4)`` -- bundles read, compressed and
         uploaded in parallel, each as a multipart upload.

       Rounds rotate the order; each result is deleted (untimed) after it is timed; medians are reported with the
       ratio to the baseline.

    2. WAL push rate into S3. Real segments (written by bulk updates of the mixed-text table, so they compress like
       real WAL) are laid out as a server's ``pg_wal`` with an ``archive_status/*.ready`` file each, then archived
       the way PostgreSQL does it: one ``/bin/sh -c`` call of the archive_command per segment, in order, renaming
       ``.ready`` to ``.done`` after each success. Compared with the raw transfer floor: the same segments
       uploaded uncompressed by one Python process holding one S3 client (no start-up, no checksum, no
       compression), one after the other. Reported: segments per second and the ratio of times.

The data is pgbench's tables plus rows of mixed, realistically compressible text (see ``bench_logical.py``):
pgbench's blank filler compresses about 35:1 and hides what compression costs. moto keeps objects in memory and
answers on loopback, so these figures measure pgrecovery's side of the work (reading, hashing, compressing,
request handling and parallelism), not a network. Run ``python benchmarks/bench_s3.py`` (about five minutes on two
cores) or ``--quick``. Results go to ``benchmarks/results/s3.json``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import (
    DBNAME,
    MB,
    SEGMENT,
    generate_wal,
    load_data,
    postgres_dir,
    rotated,
    wait_archived,
    warm_page_cache,
    write_results,
)

from pgrecovery import BaseBackup, LocalCluster, Repository
from pgrecovery import _walnames as wn
from pgrecovery.cluster import check_runnable_by
from pgrecovery.pgtools import find_tool
from pgrecovery.wal.archiver import archive_command

BUCKET = "bench"
BASELINE = "pg_basebackup | one S3 stream"
PUSH_BASELINE = "raw upload, one client, in order"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def moto_server(log: Path) -> Iterator[str]:
    """moto's S3 server on a free loopback port; yields its endpoint URL."""
    exe = Path(sys.executable).parent / "moto_server"
    if not exe.exists():
        raise SystemExit('moto_server not found: pip install "moto[server]" s3fs (nox -s bench installs them)')
    for _ in range(5):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with open(log, "wb") as out:
            proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=out)
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                time.sleep(0.05)
        if proc.poll() is None:
            try:
                yield url
            finally:
                proc.terminate()
                proc.wait(10)
            return
    raise SystemExit(f"moto_server did not start:\n{log.read_text()[-2000:]}")


def s3_env(endpoint: str) -> dict[str, str]:
    return {
        "FSSPEC_S3_ENDPOINT_URL": endpoint,
        "FSSPEC_S3_KEY": "bench-key",
        "FSSPEC_S3_SECRET": "bench-secret",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


# -- 1. base backups -------------------------------------------------------------------------------------------


def single_stream_backup(conninfo: str, fs: Any, key: str) -> int:
    """pg_basebackup's tar (one tablespace) streamed into one S3 object, written in order by one client."""
    tool = find_tool("pg_basebackup").path
    cmd = [str(tool), "-d", conninfo, "--no-password", "-D", "-", "-Ft", "--compress=client-zstd:1"]
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([*cmd, "-X", "none", "--checkpoint=fast"], stdout=subprocess.PIPE, stderr=err)
        assert proc.stdout is not None
        size = 0
        with fs.open(key, "wb") as out:
            while data := proc.stdout.read(1 << 20):
                out.write(data)
                size += len(data)
        if proc.wait() != 0:
            err.seek(0)
            raise RuntimeError(f"pg_basebackup failed ({proc.returncode}): {err.read().decode(errors='replace')}")
    return size


def run_base_backups(conninfo: str, repo: Repository, fs: Any, rounds: int) -> dict[str, dict[str, Any]]:
    def ours(workers: int) -> Any:
        def run() -> int:
            m = BaseBackup(dbname=conninfo, workers=workers, compression="zstd", level=1).run(repo)
            repo.delete_backup(m.id)
            return m.size

        return run

    def baseline() -> int:
        key = f"{BUCKET}/single/base.tar.zst"
        size = single_stream_backup(conninfo, fs, key)
        fs.rm(key)
        return size

    methods = [
        (BASELINE, baseline),
        ("BaseBackup(workers=1)", ours(1)),
        ("BaseBackup(workers=2) default", ours(2)),
        ("BaseBackup(workers=4)", ours(4)),
    ]
    results: dict[str, dict[str, Any]] = {name: {"seconds": [], "bytes": 0} for name, _ in methods}
    for r in range(rounds):
        for name, run in rotated(methods, r):
            t0 = time.perf_counter()
            size = run()
            elapsed = time.perf_counter() - t0
            results[name]["seconds"].append(elapsed)
            results[name]["bytes"] = size
            print(f"  round {r + 1}/{rounds}  {name:<34} {elapsed:7.2f} s  {size / MB:8.1f} MB", flush=True)
    return results


# -- 2. WAL push rate -----------------------------------------------------------------------------------------


def make_segments(cluster: LocalCluster, count: int, into: Path) -> list[Path]:
    """``count`` real segments written by bulk updates, copied out of the server's pg_wal (they are only read)."""
    accounts = int(cluster.query("select count(*) from pgbench_accounts", dbname=DBNAME)[0][0])
    events = int(cluster.query("select max(id) from bench_events", dbname=DBNAME)[0][0])
    first = str(cluster.query("select pg_walfile_name(pg_current_wal_lsn())")[0][0])
    generate_wal(cluster, count + 1, accounts, events)
    cluster.execute("select pg_switch_wal()")
    into.mkdir(parents=True)
    names = sorted(n for n in os.listdir(cluster.data_dir / "pg_wal") if wn.is_segment(n) and n >= first)[:count]
    for n in names:
        shutil.copyfile(cluster.data_dir / "pg_wal" / n, into / n)
    return [into / n for n in names]


def lay_out_pg_wal(segments: Sequence[Path], pgdata: Path) -> Path:
    wal = pgdata / "pg_wal"
    status = wal / "archive_status"
    status.mkdir(parents=True)
    for seg in segments:
        shutil.copyfile(seg, wal / seg.name)
        (status / f"{seg.name}.ready").touch()
    return wal


def push_like_postgres(command: str, wal: Path, env: dict[str, str]) -> float:
    """Run archive_command for each .ready file in order, as the archiver does; returns the seconds taken."""
    names = sorted(p.name.removesuffix(".ready") for p in (wal / "archive_status").glob("*.ready"))
    t0 = time.perf_counter()
    for name in names:
        cmd = command.replace("%p", f"pg_wal/{name}").replace("%f", name)
        subprocess.run(["/bin/sh", "-c", cmd], cwd=wal.parent, env=env, check=True)
        os.rename(wal / "archive_status" / f"{name}.ready", wal / "archive_status" / f"{name}.done")
    return time.perf_counter() - t0


def raw_upload(segments: Sequence[Path], fs: Any, prefix: str) -> float:
    t0 = time.perf_counter()
    for seg in segments:
        fs.put_file(str(seg), f"{prefix}/{seg.name}")
    return time.perf_counter() - t0


def run_wal_push(segments: Sequence[Path], fs: Any, endpoint: str, rounds: int, scratch: Path) -> dict[str, Any]:
    env = {**os.environ, **s3_env(endpoint)}
    out: dict[str, list[float]] = {PUSH_BASELINE: [], "pgrecovery archive_command": []}
    for r in range(rounds):
        url = f"s3://{BUCKET}/push-{r}"
        pgdata = scratch / f"push-{r}"
        wal = lay_out_pg_wal(segments, pgdata)
        ours = push_like_postgres(archive_command(url), wal, env)
        raw = raw_upload(segments, fs, f"{BUCKET}/raw-{r}")
        out["pgrecovery archive_command"].append(ours)
        out[PUSH_BASELINE].append(raw)
        for name, secs in (("pgrecovery archive_command", ours), (PUSH_BASELINE, raw)):
            print(f"  round {r + 1}/{rounds}  {name:<34} {secs:6.2f} s  {len(segments) / secs:6.1f} segments/s")
        fs.rm(f"{BUCKET}/push-{r}", recursive=True)
        fs.rm(f"{BUCKET}/raw-{r}", recursive=True)
        shutil.rmtree(pgdata)
    return out


# -- main -----------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=int, default=10, help="pgbench scale (default 10)")
    p.add_argument("--text-rows", type=int, default=1_500_000, help="rows of mixed text (default 1,500,000)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--segments", type=int, default=48, help="WAL segments pushed per round (default 48)")
    p.add_argument("--quick", action="store_true", help="a smoke test: small data, one round")
    args = p.parse_args(argv)
    if args.quick:
        args.scale, args.text_rows, args.rounds, args.segments = 2, 200_000, 1, 8
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    check_runnable_by()
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    workdir = Path(tempfile.mkdtemp(prefix="pgrecovery-bench-s3-"))
    spool_parent = postgres_dir("pgrecovery-bench-s3-spool-")
    started = time.perf_counter()
    try:
        with moto_server(workdir / "moto.log") as endpoint:
            import fsspec

            options: dict[str, Any] = {"endpoint_url": endpoint, "key": "bench-key", "secret": "bench-secret"}
            fs = fsspec.filesystem("s3", **options)
            fs.mkdir(BUCKET)
            url = f"s3://{BUCKET}/repo"
            repo = Repository(url, **options)
            settings = {
                "fsync": False,
                "shared_buffers": "256MB",
                "wal_level": "replica",
                "archive_mode": "on",
                "archive_command": archive_command(url, spool_dir=str(spool_parent / "spool")),
                "archive_timeout": 0,
                "max_wal_size": "4GB",
            }
            cluster = LocalCluster.temporary(settings=settings)
            try:
                cluster.start(env=s3_env(endpoint))
                cluster.create_database(DBNAME)
                print(f"loading data (pgbench scale {args.scale}, {args.text_rows:,} rows of mixed text) ...")
                load_data(cluster, scale=args.scale, text_rows=args.text_rows)
                wait_archived(cluster)
                warm_page_cache(cluster.data_dir)
                conninfo = cluster.conninfo(DBNAME)
                print(f"1. base backups into S3, {args.rounds} rounds ...")
                backups = run_base_backups(conninfo, repo, fs, args.rounds)
                print(f"2. WAL push into S3: {args.segments} segments, {args.rounds} rounds ...")
                segments = make_segments(cluster, args.segments, workdir / "segments")
            finally:
                cluster.destroy()
            pushes = run_wal_push(segments, fs, endpoint, args.rounds, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(spool_parent, ignore_errors=True)

    print()
    base_s = median(backups[BASELINE]["seconds"])
    print(f"{'base backup into S3':<36} {'median s':>9} {'min s':>8} {'stored MB':>10} {'vs baseline':>12}")
    print("-" * 79)
    for name, res in backups.items():
        secs = res["seconds"]
        print(
            f"{name:<36} {median(secs):9.2f} {min(secs):8.2f} {res['bytes'] / MB:10.1f} {median(secs) / base_s:11.2f}x"
        )
    print()
    raw_s = median(pushes[PUSH_BASELINE])
    n = len(segments)
    print(f"{'WAL push into S3 (' + str(n) + ' x 16 MB)':<36} {'median s':>9} {'segments/s':>11} {'vs raw':>8}")
    print("-" * 68)
    for name, secs in pushes.items():
        print(f"{name:<36} {median(secs):9.2f} {n / median(secs):11.1f} {median(secs) / raw_s:7.2f}x")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    summary = {
        "finished_at": datetime.now(UTC).isoformat(),
        "arguments": vars(args),
        "segment_bytes": SEGMENT,
        "base_backup": backups,
        "wal_push": {"segments": n, "seconds": pushes},
    }
    write_results("s3", summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
