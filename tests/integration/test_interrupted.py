"""A backup killed mid-stream is never listed as complete, is reported as interrupted, and cleans up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pgrecovery import LocalCluster, LogicalBackup, LogicalRestore, Repository
from pgrecovery.catalog import clean_leftovers, leftovers
from pgrecovery.cli.main import main


def _wait_for(predicate: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def _partial_dump(root: Path) -> list[Path]:
    """Unfinished (temporary) dump files that already hold data."""
    return [p for p in root.glob("backups/*/data/.*.tmp") if p.stat().st_size > 0]


def test_killed_backup_is_not_listed_and_is_cleaned(
    pg: LocalCluster, fresh_db: str, db_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pg.execute(
        "create table big as select i, md5(i::text) || md5((i * 7)::text) as t from generate_series(1, 300000) i",
        dbname=db_name,
    )
    root = tmp_path / "repo"
    # zstd level 19 on one thread makes the stream slow enough to be caught half-way
    cmd = [sys.executable, "-m", "pgrecovery", "--repo", str(root), "backup", "logical", "--dbname", fresh_db]
    proc = subprocess.Popen([*cmd, "--level", "19", "--threads", "1"], stdout=subprocess.DEVNULL)
    try:
        _wait_for(lambda: root.exists() and _partial_dump(root))
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    repo = Repository(str(root))
    assert repo.backups() == []
    [left] = leftovers(repo)
    assert left.reason == "interrupted (its process is gone)"

    assert main(["--repo", str(root), "list", "--incomplete", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["backups"] == []
    assert [x["id"] for x in listed["incomplete"]] == [left.id]

    # pg_dump notices its reader is gone and ends: no session of it stays behind on the server
    _wait_for(lambda: not pg.query("select 1 from pg_stat_activity where application_name = 'pg_dump'"))

    assert [x.id for x in clean_leftovers(repo)] == [left.id]
    assert not any(p.is_file() for p in root.rglob("*"))

    m = LogicalBackup(dbname=fresh_db).run(repo)  # a rerun succeeds
    assert [b.id for b in repo.backups()] == [m.id]
    target = pg.conninfo(f"{db_name}_copy")
    LogicalRestore(repo, m.id).run(target, create=True)
    try:
        assert pg.query("select count(*), sum(i) from big", dbname=f"{db_name}_copy") == [(300000, 45000150000)]
    finally:
        pg.execute(f'drop database "{db_name}_copy"')
