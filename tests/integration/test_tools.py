"""Locating PostgreSQL programs: versions are checked before anything starts."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from pgrecovery import ClusterError, LocalCluster, LogicalBackup, Repository, ToolNotFound
from pgrecovery.catalog import leftovers
from pgrecovery.cluster import check_runnable_by


def test_pg_dump_older_than_the_server_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_db: str, repo: Repository
) -> None:
    bindir = tmp_path / "old-bin"
    bindir.mkdir()
    fake = bindir / "pg_dump"
    fake.write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 9.6.24'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PGRECOVERY_PG_BINDIR", str(bindir))
    with pytest.raises(ToolNotFound, match=r"pg_dump version 15 or newer is needed .*9\)") as err:
        LogicalBackup(dbname=fresh_db).run(repo)
    assert "older than the server" in str(err.value)
    assert repo.backups() == []
    assert leftovers(repo) == []


def test_missing_programs_name_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGRECOVERY_PG_BINDIR", str(tmp_path))
    with pytest.raises(ToolNotFound, match="initdb not found: set PGRECOVERY_PG_BINDIR"):
        LocalCluster.temporary()


def _reachable_by_others(path: Path) -> bool:
    return all(p.stat().st_mode & stat.S_IXOTH for p in [path.parent, *path.parent.parents])


@pytest.mark.skipif(os.getuid() != 0, reason="only meaningful when the server runs as another OS user")
def test_server_user_access_to_the_interpreter_is_checked(tmp_path: Path) -> None:
    exe = Path(sys.executable)
    if _reachable_by_others(exe):
        check_runnable_by()  # archive_command could run this interpreter
    else:
        with pytest.raises(ClusterError, match="cannot run"):
            check_runnable_by()
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    fake = private / "python"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    with pytest.raises(ClusterError, match=r"OS user 'postgres' cannot run .*/private/python.*/usr/bin/python3"):
        check_runnable_by(python=str(fake))
