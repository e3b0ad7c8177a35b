"""Storage credentials never appear in logs, error messages, manifests or --json output (S3 through moto)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from storage_backends import S3_KEY, S3_SECRET, Backend

from pgrecovery import LocalCluster, Repository, StorageError
from pgrecovery.storage import RetryPolicy


@pytest.fixture(scope="module")
def s3(s3_backend: Backend) -> Backend:
    return s3_backend


@pytest.fixture(scope="module")
def small_db(pg: LocalCluster) -> Iterator[str]:
    name = f"cred_{uuid.uuid4().hex[:8]}"
    conninfo = pg.create_database(name)
    pg.execute("create table t (i int); insert into t select generate_series(1, 100)", dbname=name)
    yield conninfo
    pg.execute(f'drop database if exists "{name}" with (force)')


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "pgrecovery", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_cli_runs_against_s3_never_show_the_secret(s3: Backend, small_db: str) -> None:
    url = s3.url(f"cred-{uuid.uuid4().hex[:8]}")
    env = {**s3.env, "PGRECOVERY_REPO": url}  # credentials through the environment only, as documented
    runs = [
        _cli(["-v", "--json", "backup", "logical", "--dbname", small_db], env),
        _cli(["-v", "--json", "list"], env),
        _cli(["-v", "--json", "show", "latest"], env),
        _cli(["-v", "--json", "verify", "latest"], env),
        _cli(["-v", "--json", "show", "20000101T000000Z-logical"], env),  # fails: unknown id
        # options given on the command line (possible, not recommended: ps shows them) are not echoed either
        _cli(
            ["-v", "--json", "--repo", url, "list",
             "--storage-option", f"endpoint_url={s3.options['endpoint_url']}",
             "--storage-option", f"key={S3_KEY}", "--storage-option", f"secret={S3_SECRET}"],
            {"PGRECOVERY_REPO": ""},
        ),
    ]  # fmt: skip
    assert [r.returncode for r in runs[:4]] == [0, 0, 0, 0], [r.stderr[-2000:] for r in runs]
    assert runs[4].returncode == 2
    assert "no complete backup" in runs[4].stderr
    assert runs[5].returncode == 0, runs[5].stderr[-2000:]
    backup = json.loads(runs[0].stdout)
    assert [b["id"] for b in json.loads(runs[1].stdout)["backups"]] == [backup["id"]]
    assert runs[5].stdout == runs[1].stdout
    for r in runs:
        assert S3_SECRET not in r.stdout
        assert S3_SECRET not in r.stderr
    # every stored object (manifest, started marker, dump) is free of it too
    repo = Repository(url, **s3.options)
    keys = repo.list_keys()
    assert any(k.endswith("manifest.json") for k in keys)
    for key in keys:
        assert S3_SECRET.encode() not in repo.read_bytes(key), key


def test_storage_errors_and_retry_logs_hide_credentials(
    s3: Backend, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Even when a driver puts a credential into its error text (some do: signed URLs, connection strings)."""
    repo = Repository(
        s3.url("cred-errors"), retry_policy=RetryPolicy(attempts=3, base_delay=0, max_delay=0), **s3.options
    )
    leaky: list[Any] = [
        ConnectionResetError(f"reset while signing with {S3_KEY}:{S3_SECRET}"),
        OSError(f"denied: https://x/?X-Amz-Signature=abcdef123456&X-Amz-Credential={S3_KEY}"),
    ]

    def fail(*args: object, **kwargs: object) -> bool:
        raise leaky[0]

    monkeypatch.setattr(repo.fs, "exists", fail)
    caplog.set_level(logging.INFO, logger="pgrecovery")
    with pytest.raises(StorageError) as caught:
        repo.exists("some/key")
    assert "after 3 attempts" in str(caught.value)
    assert S3_SECRET not in str(caught.value)
    assert "***" in str(caught.value)
    retry_lines = [r.getMessage() for r in caplog.records]
    assert len(retry_lines) == 2
    assert all(S3_SECRET not in line for line in retry_lines)

    leaky[0] = leaky[1]
    with pytest.raises(StorageError) as caught:
        repo.exists("some/key")
    assert "abcdef123456" not in str(caught.value)
    assert "X-Amz-Signature=***" in str(caught.value)
