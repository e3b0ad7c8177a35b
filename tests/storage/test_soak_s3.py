"""The archiving soak (tests/soak/test_archive_soak.py) against S3: moto behind the fault proxy
(`fault_proxy.FaultProxy`), which resets connections, loses answers and answers 503 / 500 now and then, and
refuses every connection for 3-8 s at random moments (the store restarting), on top of the soak's own faulty
archive_command wrapper. Same checks: no gap, no corrupt segment, the backlog drains, the PITR matches.

Runs only with ``PGRECOVERY_SOAK=1`` (``nox -s soak``); figures go to ``soak_archive_s3.json``.
"""

from __future__ import annotations

import random
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fault_proxy import FaultProxy, Plan
from pgtesting import owned_tmpdir
from storage_backends import S3_KEY, S3_SECRET, Backend

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "soak"))  # the soak's machinery
from test_archive_soak import SOAK, Outages, Store, _every, soak

pytestmark = [
    pytest.mark.soak,
    pytest.mark.skipif(not SOAK, reason="the long soak profile: set PGRECOVERY_SOAK=1 (nox -s soak)"),
]


class ProxyOutages(Outages):
    """The store unreachable: the proxy refuses every connection for the outage's length."""

    def __init__(self, proxy: FaultProxy, rng: random.Random, every: tuple[float, float]) -> None:
        super().__init__(rng, every)
        self.proxy = proxy

    def outage(self, seconds: float) -> None:
        self.proxy.down(seconds)
        self.done.wait(seconds)

    @property
    def injected(self) -> dict[str, int]:
        return {f"network {kind}": n for kind, n in sorted(self.proxy.injected.items())}


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = owned_tmpdir("pgrecovery-soak-s3-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_archiving_soak_on_s3(
    moto: Any, workdir: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = f"pgr-soak-{uuid.uuid4().hex[:8]}"
    backend = Backend(
        "s3",
        "s3",
        bucket,
        options={"endpoint_url": moto.endpoint, "key": S3_KEY, "secret": S3_SECRET},
        env={"FSSPEC_S3_ENDPOINT_URL": moto.endpoint, "FSSPEC_S3_KEY": S3_KEY, "FSSPEC_S3_SECRET": S3_SECRET},
    )
    backend.fs().mkdir(bucket)
    proxy = FaultProxy(moto.port, "s3", Plan(rate=0.03, kinds=("reset", "lost", "cut", "503", "500"), seed=7))
    for name, value in backend.env.items():  # the recovery at the end reads the archive directly
        monkeypatch.setenv(name, value)
    prefix = "soak"
    try:
        store = Store(
            "s3",
            backend.url(prefix),
            backend.repo(prefix),
            lambda rng: ProxyOutages(proxy, rng, _every()),
            server_env={**backend.env, "FSSPEC_S3_ENDPOINT_URL": proxy.endpoint},  # archiving goes through it
            leftovers=lambda: len(backend.repo(prefix).unfinished_uploads(0.0)),
        )
        figures = soak(store, workdir, request)
    finally:
        proxy.stop()
    assert any(k.startswith("network ") for k in figures["faults"]), "the proxy injected nothing"
