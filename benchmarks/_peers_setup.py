"""``bench_peers.py``'s fixtures: moto's S3 server with stunnel in front of it (pgBackRest speaks only TLS to S3),
pgBackRest's configuration files, barman-cloud's command lines, the source server (started with a Unix socket,
which pgBackRest connects through) and commands run as the server's OS user."""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from _common import postgres_dir, ready_count
from bench_s3 import free_port, moto_server

from pgrecovery import LocalCluster
from pgrecovery.cluster import default_run_as
from pgrecovery.pgtools import find_tool

BUCKET = "bench"
KEY, SECRET, REGION = "bench-key", "bench-secret", "us-east-1"
STANZA = "bench"
BIN = Path(sys.executable).parent  # barman-cloud's programs are installed beside this interpreter


def missing_tools() -> list[str]:
    """What this benchmark needs and cannot find (``nox -s bench`` installs all of it)."""
    need = {"pgbackrest": shutil.which("pgbackrest"), "stunnel4": shutil.which("stunnel4") or shutil.which("stunnel")}
    need["barman-cloud (pip install barman)"] = str(BIN / "barman-cloud-wal-archive")
    need["moto_server"] = str(BIN / "moto_server")
    return [name for name, path in need.items() if not path or not os.access(path, os.X_OK)]


def as_postgres(cmd: Sequence[str]) -> list[str]:
    """``cmd`` run as the server's OS user (``runuser`` keeps the environment) when we are root."""
    who = default_run_as()
    return ["runuser", "-u", who, "--", *cmd] if who else list(cmd)


def run_pg(cmd: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> str:
    """Run ``cmd`` as the server's OS user; its output, or RuntimeError with it."""
    done = subprocess.run(
        as_postgres(cmd), env={**os.environ, **(env or {})}, cwd=cwd or "/", capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done.stdout


# -- S3 ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3:
    endpoint: str  # moto, plain HTTP
    tls_port: int  # stunnel's TLS port in front of it

    def env(self) -> dict[str, str]:
        """What pgrecovery (``FSSPEC_S3_*``) and barman-cloud (``AWS_*``) read, in every process and the servers."""
        return {
            "FSSPEC_S3_ENDPOINT_URL": self.endpoint,
            "FSSPEC_S3_KEY": KEY,
            "FSSPEC_S3_SECRET": SECRET,
            "AWS_ACCESS_KEY_ID": KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
        }


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"stunnel did not start:\n{log.read_text(errors='replace')[-2000:]}") from None
            time.sleep(0.05)


@contextmanager
def s3_services(workdir: Path) -> Iterator[S3]:
    """moto's S3 server (one bucket) and stunnel accepting TLS for it, with a self-signed certificate."""
    with moto_server(workdir / "moto.log") as endpoint:
        tls = workdir / "tls"
        tls.mkdir()
        subprocess.run(
            [
                *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"),
                *("-keyout", str(tls / "key.pem"), "-out", str(tls / "cert.pem")),
            ],
            check=True,
            capture_output=True,
        )
        port = free_port()
        moto_port = endpoint.rsplit(":", 1)[1]
        conf = tls / "stunnel.conf"
        conf.write_text(
            f"foreground = yes\npid =\noutput = {tls / 'stunnel.log'}\n[s3]\naccept = 127.0.0.1:{port}\n"
            f"connect = 127.0.0.1:{moto_port}\ncert = {tls / 'cert.pem'}\nkey = {tls / 'key.pem'}\n"
        )
        stunnel = shutil.which("stunnel4") or shutil.which("stunnel") or "stunnel4"
        log = tls / "stunnel.out"
        with open(log, "wb") as out:
            proc = subprocess.Popen([stunnel, str(conf)], stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_port(port, proc, log)
            import fsspec

            fsspec.filesystem("s3", endpoint_url=endpoint, key=KEY, secret=SECRET).mkdir(BUCKET)
            yield S3(endpoint, port)
        finally:
            proc.terminate()
            proc.wait(10)


# -- pgBackRest --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PgBackRest:
    """Configuration files of one stanza (written into ``home``, owned by the server's OS user)."""

    home: Path
    stanza: str

    def config(self, name: str) -> Path:
        return self.home / f"{name}.conf"

    def command(self, config: str, *args: str) -> list[str]:
        return ["pgbackrest", f"--config={self.config(config)}", f"--stanza={self.stanza}", *args]

    def archive_command(self, config: str) -> str:
        return shlex.join(self.command(config, "archive-push")) + " %p"

    def run(self, config: str, *args: str, cwd: Path | None = None) -> str:
        return run_pg(self.command(config, *args), cwd=cwd or self.home)


def _repo(n: int, kind: str, local: Path, s3: S3, path: str) -> list[str]:
    if kind == "local":
        return [f"repo{n}-path={local}"]
    return [
        f"repo{n}-type=s3",
        f"repo{n}-path=/{path}",
        f"repo{n}-s3-bucket={BUCKET}",
        f"repo{n}-s3-endpoint=127.0.0.1",
        f"repo{n}-s3-region={REGION}",
        f"repo{n}-s3-key={KEY}",
        f"repo{n}-s3-key-secret={SECRET}",
        f"repo{n}-s3-uri-style=path",
        f"repo{n}-storage-host=127.0.0.1",
        f"repo{n}-storage-port={s3.tls_port}",
        f"repo{n}-storage-verify-tls=n",
    ]


def pgbackrest_configs(
    stanza: str, cluster: LocalCluster, socket_dir: Path, s3: S3, pg_path: Path | None = None
) -> PgBackRest:
    """Configs ``local``, ``s3`` (one repository each), ``local-async``/``s3-async`` (archive-async=y with a spool
    path) and ``both`` (two repositories: what the source's archive_command pushes to) of ``stanza``. ``pg_path``:
    the data directory archive-push resolves ``%p`` in and reads ``global/pg_control`` from (default: the
    cluster's; stanza-create is always run against the cluster's). Backups:
    zstd level 1 (as pgrecovery's), 2 processes, bundles, a fast checkpoint."""
    home = postgres_dir(f"pgrecovery-bench-pgbackrest-{stanza}-")
    local = home / "repo"
    for d in ("repo", "log", "lock", "spool"):
        (home / d).mkdir()
    common = [
        f"log-path={home / 'log'}",
        f"lock-path={home / 'lock'}",
        f"spool-path={home / 'spool'}",
        "log-level-console=warn",
        "compress-type=zst",
        "compress-level=1",
        "process-max=2",
        "start-fast=y",
        "archive-timeout=120",
    ]
    pg = [f"pg1-path={pg_path or cluster.data_dir}", f"pg1-port={cluster.port}", f"pg1-socket-path={socket_dir}"]
    pg.append(f"pg1-user={cluster.superuser}")
    repos = {
        "local": _repo(1, "local", local, s3, stanza),
        "s3": _repo(1, "s3", local, s3, f"pgbackrest-{stanza}"),
        "both": _repo(1, "local", local, s3, stanza) + _repo(2, "s3", local, s3, f"pgbackrest-{stanza}"),
    }
    for name, lines in [*repos.items(), ("local-async", repos["local"]), ("s3-async", repos["s3"])]:
        more = ["archive-async=y"] if name.endswith("-async") else []
        retention = [f"repo{n}-retention-full=99" for n in (1, 2)[: 2 if name == "both" else 1]]
        text = "\n".join(["[global]", *common, *more, *lines, *retention, "repo1-bundle=y", f"[{stanza}]", *pg])
        (home / f"{name}.conf").write_text(text + "\n")
    who = default_run_as()
    if who:
        shutil.chown(home, who, who)
        for p in home.rglob("*"):
            shutil.chown(p, who, who)
    return PgBackRest(home, stanza)


def stanza_create(pgbr: PgBackRest, cluster: LocalCluster) -> None:
    pgbr.run("both", f"--pg1-path={cluster.data_dir}", "stanza-create")


def pgbackrest_version() -> str:
    return subprocess.run(["pgbackrest", "version"], capture_output=True, text=True, check=True).stdout.strip()


# -- barman-cloud ------------------------------------------------------------------------------------------------


def barman(program: str, s3: S3, *args: str) -> list[str]:
    """A barman-cloud command line against moto (credentials from the ``AWS_*`` environment)."""
    return [str(BIN / f"barman-cloud-{program}"), "--endpoint-url", s3.endpoint, *args]


def barman_wal_archive(s3: S3, server: str) -> str:
    return shlex.join(barman("wal-archive", s3, "--zstd", f"s3://{BUCKET}/barman", server)) + " %p"


def barman_wal_restore(s3: S3, server: str) -> str:
    return shlex.join(barman("wal-restore", s3, f"s3://{BUCKET}/barman", server)) + " %f %p"


def barman_version() -> str:
    out = subprocess.run([str(BIN / "barman-cloud-backup"), "--version"], capture_output=True, text=True)
    return (out.stdout or out.stderr).strip()


# -- the source server -------------------------------------------------------------------------------------------


def start_with_socket(cluster: LocalCluster, socket_dir: Path, env: Mapping[str, str]) -> None:
    """Start ``cluster`` listening on 127.0.0.1 and on a Unix socket in ``socket_dir`` (pgBackRest connects
    through it; `LocalCluster.start` turns Unix sockets off)."""
    cluster.configure(port=cluster.port, listen_addresses=cluster.host, unix_socket_directories=str(socket_dir))
    pg_ctl = find_tool("pg_ctl").path
    log = cluster.log_file or cluster.data_dir.with_name("server.log")
    run_pg([str(pg_ctl), "-D", str(cluster.data_dir), "-l", str(log), "-w", "start"], env=env)
    cluster.wait_ready()


def drain(cluster: LocalCluster, timeout: float = 600) -> None:
    """Switch to a new segment and wait until no file is waiting for archive_command (``.ready``), three checks in
    a row. (Not `_common.wait_archived`: with archive_command changed between tools, pg_stat_archiver was seen
    not to name a segment that had been archived, and that wait never ended.)"""
    cluster.execute("select pg_switch_wal()")
    deadline = time.monotonic() + timeout
    quiet = 0
    while quiet < 3:
        quiet = quiet + 1 if ready_count(cluster) == 0 else 0
        if time.monotonic() > deadline:
            raise RuntimeError(f"WAL archiving did not catch up within {timeout:.0f} s{cluster.log_tail()}")
        time.sleep(0.2)


def set_archive_command(cluster: LocalCluster, command: str) -> None:
    cluster.configure(archive_command=command)
    cluster.execute("select pg_reload_conf()")
    time.sleep(0.3)  # the archiver rereads its configuration
