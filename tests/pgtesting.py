"""Helpers for tests that run PostgreSQL servers as their own OS user (importable from every test directory)."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import tempfile
import time
from collections.abc import Iterator
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


class Archiving:
    """A throwaway cluster archiving into its own file:// repository, plus scratch data directories for the
    recoveries a test runs (stopped and removed with it)."""

    def __init__(self, prefix: str) -> None:
        from pgrecovery import Repository
        from pgrecovery.wal.archiver import archive_command

        self.root = owned_tmpdir(f"{prefix}-repo-")
        self.url = f"file://{self.root}"
        self.repo = Repository(self.url)
        self.pg = LocalCluster.temporary(
            settings={"wal_level": "replica", "archive_mode": "on", "archive_command": archive_command(self.url)}
        )
        self.prefix = prefix
        self.made: list[Path] = []

    def pgdata(self) -> Path:
        """A data directory path (not yet created) in a new directory the server's user owns."""
        base = owned_tmpdir(f"{self.prefix}-")
        self.made.append(base)
        return base / "data"

    def close(self) -> None:
        for base in self.made:
            cluster = LocalCluster(data_dir=base / "data")
            if cluster.is_running():
                cluster.stop(mode="immediate")
            shutil.rmtree(base, ignore_errors=True)
        self.pg.destroy()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def archiving_cluster(prefix: str) -> Iterator[Archiving]:
    """`Archiving`, started, with a table ``t (i int primary key, note text)``; removed afterwards."""
    ctx = Archiving(prefix)
    try:
        ctx.pg.start()
        ctx.pg.execute("create table t (i int primary key, note text)")
        yield ctx
    finally:
        ctx.close()
