"""WAL archiving and reading through an unreliable network (see flaky_fs.py), on each object store.

What must hold: no segment is lost, and a push that reports success always left a complete object (read back
without faults, with the right sha256), whatever mix of failed requests, lost answers and dropped uploads occurred.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import pytest
from flaky_fs import FaultPlan, FlakyFileSystem
from storage_backends import PART_SIZE, Backend

from pgrecovery import Repository, StorageError
from pgrecovery import _walnames as wn
from pgrecovery.storage import RetryPolicy, capabilities_of
from pgrecovery.wal.archiver import WalArchiver

FAST_RETRY = RetryPolicy(attempts=6, base_delay=0.002, max_delay=0.02)


@pytest.fixture(params=["declared", "staged"])
def writes(request: pytest.FixtureRequest) -> str:
    """How the wrapped store is written: as the object store it wraps (its capabilities declared, so the
    multipart / conditional-PUT writer runs), or as any unknown filesystem (staged, published, confirmed)."""
    return str(request.param)


def _flaky(backend: Backend, prefix: str, plan: FaultPlan, writes: str) -> Repository:
    inner = backend.fs()
    fs = FlakyFileSystem(inner, plan)
    declared = capabilities_of(inner) if writes == "declared" else None
    repo = Repository(
        fs=fs, root=f"{backend.bucket}/{prefix}", retry_policy=FAST_RETRY, part_size=PART_SIZE, capabilities=declared
    )
    assert repo.capabilities.staged == (writes == "staged")
    return repo


def _segments(directory: Path, count: int, large: set[int]) -> list[Path]:
    """WAL-like files: most compress well (small uploads), a few are random and bigger than a part (multipart)."""
    directory.mkdir()
    paths = []
    for n in range(1, count + 1):
        path = directory / wn.segment_name(1, n)
        if n in large:
            path.write_bytes(os.urandom(PART_SIZE + (1 << 20)))
        else:
            path.write_bytes(os.urandom(16 << 10) * 8 + n.to_bytes(4, "big"))
        paths.append(path)
    return paths


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_wal_archiving_under_faults_loses_nothing(object_store: Backend, writes: str, tmp_path: Path) -> None:
    prefix = f"faults-{uuid.uuid4().hex[:8]}"
    plan = FaultPlan(rate=0.2, lost_rate=0.3, cut_rate=0.05, seed=sum(map(ord, object_store.name)))
    flaky = WalArchiver(_flaky(object_store, prefix, plan, writes), spool_dir=tmp_path / "spool", parallel=1)
    clean = WalArchiver(object_store.repo(prefix))
    paths = _segments(tmp_path / "pg_wal", 30, large={5, 12, 20, 27})

    refused = 0
    for path in paths:
        for _ in range(40):  # as PostgreSQL does: archive_command is called again until it succeeds
            try:
                result = flaky.push(path)
                break
            except StorageError:
                refused += 1
        else:
            pytest.fail(f"{path.name} could not be archived in 40 attempts")
        # the moment a push reports success, the object is complete (checked without faults)
        obj = clean.find(path.name)
        assert obj is not None, path.name
        assert obj.sha256 == result.sha256 == _sha256(path)
        assert clean.read(path.name) == path.read_bytes()

    report = clean.verify(check_digests=True)
    assert report.ok
    assert report.count == len(paths)
    assert clean.missing(paths[0].name) == []
    # every kind of fault happened, and some were beyond what retries can hide (a push failed, then succeeded)
    print(object_store.name, dict(plan.counts), "refused pushes:", refused)
    assert plan.total("before") > 10
    assert plan.total("lost") > 3
    assert plan.total("cut") > 0
    assert refused > 0

    # reading back through the same network: every segment arrives whole
    out = tmp_path / "restored"
    out.mkdir()
    for path in paths:
        dest = out / path.name
        assert flaky.fetch(path.name, dest, prefetch=False)
        assert _sha256(dest) == _sha256(path)
    assert plan.total("before") > 0


def test_a_lasting_failure_names_the_key_and_repository(object_store: Backend, writes: str) -> None:
    prefix = f"down-{uuid.uuid4().hex[:8]}"
    plan = FaultPlan(rate=1.0, lost_rate=0, cut_rate=0)
    repo = _flaky(object_store, prefix, plan, writes)
    with pytest.raises(StorageError) as caught:
        repo.put_bytes("wal/00000001/x", b"data")
    text = str(caught.value)
    assert "'wal/00000001/x'" in text
    assert f"://{object_store.bucket}/{prefix}" in text
    assert f"after {FAST_RETRY.attempts} attempts" in text
    for secret in object_store.secrets:
        assert secret not in text
    plan.enabled = False
    assert not repo.exists("wal/00000001/x")


class _RacedClaim(FlakyFileSystem):
    """Another claimer's marker lands between this one's existence check and its write, and the write's answer is a
    transient error: the retry then finds a marker stored under the id and must not take it for its own."""

    def __init__(self, inner: object, marker: str) -> None:
        super().__init__(inner, FaultPlan(rate=0, lost_rate=0, cut_rate=0))  # type: ignore[arg-type]
        self.marker, self.raced = marker, False

    def exists(self, path: str, **kwargs: object) -> bool:
        return False if path.endswith(self.marker) and not self.raced else super().exists(path, **kwargs)

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: object) -> None:
        if path.endswith(self.marker) and not self.raced:
            self.raced = True
            raise TimeoutError("put timed out (injected)")
        super().pipe_file(path, value, mode=mode, **kwargs)


def test_a_claim_whose_write_timed_out_never_takes_another_claims_id(object_store: Backend) -> None:
    """Two threads of one process claim a backup id for the same second (same host, pid, kind and time): each
    gets its own, even when one write's answer is lost and the retry finds the other's marker stored."""
    from datetime import UTC, datetime

    from pgrecovery.catalog import claim_backup_id

    prefix, now = f"claims-{uuid.uuid4().hex[:8]}", datetime.now(UTC)
    first = claim_backup_id(object_store.repo(prefix), "logical", now)
    inner = object_store.fs()
    fs = _RacedClaim(inner, f"backups/{first}/started.json")
    root = f"{object_store.bucket}/{prefix}"
    raced = Repository(fs=fs, root=root, retry_policy=FAST_RETRY, capabilities=capabilities_of(inner))
    second = claim_backup_id(raced, "logical", now)
    assert fs.raced
    assert second != first
