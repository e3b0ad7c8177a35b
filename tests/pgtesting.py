"""Helpers for tests that run PostgreSQL servers as their own OS user (importable from every test directory)."""

from __future__ import annotations

import os
import pwd
import tempfile
import time
from pathlib import Path

from pgrecovery import LocalCluster


def owned_tmpdir(prefix: str) -> Path:
    """A new directory the server's OS user owns (pytest's tmp_path is private to root, and a server run as
    ``postgres`` must write its data directory, archive and spool there)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    if os.getuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(path, pw.pw_uid, pw.pw_gid)
    return path


def wait_archived(pg: LocalCluster, timeout: float = 120) -> None:
    """Switch WAL and wait until the archiver has sent everything up to the switch."""
    (wal,) = pg.query("select pg_walfile_name(pg_switch_wal())")[0]
    deadline = time.monotonic() + timeout
    failed = None
    while time.monotonic() < deadline:
        last, failed = pg.query("select last_archived_wal, last_failed_wal from pg_stat_archiver")[0]
        if last is not None and last >= wal:
            return
        time.sleep(0.1)
    raise AssertionError(f"WAL {wal} was not archived in time (last failed: {failed})")
