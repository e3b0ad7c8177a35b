"""The WAL spool: archive-ahead markers and the prefetch queue (standard library only, and little of it).

archive_command and restore_command answer from here without importing fsspec, psycopg, zstandard, attrs or
even typing: the shell part of the generated commands (`pgrecovery.wal.commands`) tests an acknowledgement link
or moves a queued segment itself; otherwise `pgrecovery/_walcmd.py` runs under ``python -S`` and asks
`pgrecovery._fastpath` first (without ``site`` and without the package's ``__init__`` the interpreter starts in
a few milliseconds). Layout::

    <spool>/archived/<name>       "pgrecovery-marker 1 <size> <mtime_ns> <inode> <sha256> <repo tag>": the file
                                  with exactly that size, mtime and inode is durable in that repository
    <spool>/acked/<tag>/<name>    a hard link to the very file named so in pg_wal when it was made durable there
                                  (archive_command's shell part: ``[ acked/<tag>/%f -ef %p ]`` answers at once)
    <spool>/acked/<tag>.worker    the pid of the WAL worker serving that repository, while it runs
    <spool>/prefetch/<name>       a segment downloaded ahead of restore_command, verified, complete
    <spool>/prefetch/.source      "<repo tag> <boot id>": the repository the prefetched files came from, and the
                                  boot they were written in (they are not fsynced: after a power loss, which is
                                  always a reboot, the queue no longer counts and is emptied)
    <spool>/prefetch/.wanted      the last segment restore_command asked for (the prefetcher works ahead of it)
    <spool>/prefetch.lock         flock()ed by the one running prefetch process
    <spool>/prefetch.log          why the last prefetch process stopped early, if it failed

The repository tag is a hash of the repository URL: markers and prefetched files of another repository never
count. Everything here is best effort: a spool that cannot be written only costs speed, never correctness.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys
import time

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs milliseconds on the fast path
if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable, Mapping
    from types import ModuleType
    from typing import Any, Final

if __package__:
    from . import _walclient, _walnames
else:  # run as a script: import the sibling modules without the package (whose __init__ imports typing)
    import importlib

    _walnames = importlib.import_module("_walnames")
    _walclient = importlib.import_module("_walclient")

SPOOL_NAME: Final = "pgrecovery_spool"
OPTIONS_ENV: Final = "PGRECOVERY_PREFETCH_STORAGE_OPTIONS"
_MARKER_MAGIC: Final = "pgrecovery-marker"
_children: list[subprocess.Popen[bytes]] = []


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except OSError:
        return False


def default_spool(wal_path: str | os.PathLike[str]) -> str:
    """``<directory of the WAL file>/../pgrecovery_spool``: beside pg_wal, in the data directory."""
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(wal_path)), "..", SPOOL_NAME))


def _sha256_module() -> ModuleType:
    # hashlib loads OpenSSL (2-3 ms); the built-in sha256 is enough for a URL.
    import importlib

    for name in ("_sha256", "_sha2", "hashlib"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ImportError("no sha256 implementation")  # pragma: no cover


def repo_tag(url: str) -> str:
    """A short, credential-free identity of a repository URL."""
    return str(_sha256_module().sha256(url.encode()).hexdigest()[:16])


def ensure_dir(path: str) -> str:
    """Create ``path`` (and parents) with mode 0700; set that mode on an existing directory we own (tighter, or
    made under a umask that took its owner's bits)."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.stat(path)
    if st.st_uid == os.getuid() and st.st_mode & 0o777 != 0o700:
        os.chmod(path, 0o700)
    return path


def _fsutil() -> ModuleType:
    """`pgrecovery._fsutil`, loaded when a file is first written: a spool hit writes nothing, and the module's
    imports (contextlib) would cost the fast path milliseconds. Run as a script, the sibling module is imported
    without the package, as `_walnames` is."""
    if __package__:
        from . import _fsutil

        return _fsutil
    import importlib

    return importlib.import_module("_fsutil")


def _atomic_write_text(path: str, text: str, *, sync: bool) -> None:
    """Write a small spool file whole or not at all; ``sync=False`` where it is a cache or a hint."""
    _fsutil().write_atomic(path, text, mode=0o600, sync=sync)


# -- archive-ahead markers -------------------------------------------------------------------------------------


def marker_path(spool: str, name: str) -> str:
    return os.path.join(spool, "archived", name)


def write_marker(spool: str, path: str, st: os.stat_result, sha256: str, tag: str) -> None:
    """Remember that the file ``path`` with stat ``st`` (and digest ``sha256``) is durable in repository ``tag``:
    the text marker, and a hard link that the shell part of archive_command tests with ``-ef`` (`link_ack`)."""
    name = os.path.basename(path)
    ensure_dir(spool)
    ensure_dir(os.path.join(spool, "archived"))
    text = f"{_MARKER_MAGIC} 1 {st.st_size} {st.st_mtime_ns} {st.st_ino} {sha256} {tag}\n"
    _atomic_write_text(marker_path(spool, name), text, sync=False)  # lost: the next push checks the repository
    link_ack(spool, path, st, tag)


def ack_dir(spool: str, tag: str) -> str:
    return os.path.join(spool, "acked", tag)


def link_ack(spool: str, path: str, st: os.stat_result, tag: str) -> bool:
    """Hard-link the pushed file as ``acked/<tag>/<name>``, only if it is still the very file that was read (same
    inode, size and mtime as ``st``). While the link exists, ``pg_wal/<name> -ef acked/<tag>/<name>`` holds only
    for that file: the link keeps its inode from being reused, and PostgreSQL never rewrites a completed WAL file
    under its name (a recycled segment is renamed first). Not possible across filesystems (pg_wal elsewhere): the
    Python path answers from the text marker then."""
    directory = ack_dir(spool, tag)
    link = os.path.join(directory, os.path.basename(path))
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        _unlink(link)
        os.link(path, link)
        now = os.stat(link)
    except OSError:
        return False
    if (now.st_ino, now.st_dev, now.st_size, now.st_mtime_ns) != (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns):
        _unlink(link)  # the name now holds another file: no acknowledgement for it
        return False
    return True


def pushed_already(path: str, spool: str, tag: str) -> str | None:
    """The sha256 recorded for ``path`` when its marker matches the file's current size, mtime and inode."""
    name = os.path.basename(path)
    try:
        with open(marker_path(spool, name)) as f:
            parts = f.read(512).split()
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    if len(parts) != 7 or parts[0] != _MARKER_MAGIC or parts[1] != "1" or parts[6] != tag:
        return None
    if parts[2:5] != [str(st.st_size), str(st.st_mtime_ns), str(st.st_ino)]:
        return None
    return parts[5]


# seconds after which a marker's temporary file is a killed writer's (a younger one may be renamed any moment)
_TEMP_LEFT: Final = 60.0


def _mtime(path: str) -> float:
    try:
        return os.lstat(path).st_mtime
    except OSError:
        return float("inf")


def sweep_markers(spool: str, wal_dir: str) -> list[str]:
    """Remove the markers of files that are gone from ``wal_dir`` (archived, then removed or recycled), the
    temporary files of killed marker writers, and the acknowledgement links whose name in ``wal_dir`` is gone or
    holds another file (a link must not keep a removed segment's 16 MB alive)."""
    directory = os.path.join(spool, "archived")
    try:
        names = os.listdir(directory)
    except OSError:
        names = []
    old = time.time() - _TEMP_LEFT
    swept = [
        n
        for n in names
        if (_mtime(os.path.join(directory, n)) < old if n.endswith(".tmp") else not os.path.exists(f"{wal_dir}/{n}"))
        and _unlink(os.path.join(directory, n))
    ]
    try:
        tags = os.listdir(os.path.join(spool, "acked"))
    except OSError:
        tags = []
    for tag in tags:
        links = ack_dir(spool, tag)
        try:
            held = os.listdir(links)
        except OSError:
            continue
        for n in held:
            if not same_file(os.path.join(links, n), os.path.join(wal_dir, n)):
                _unlink(os.path.join(links, n))
    return swept


def same_file(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` are one file (False when either is missing)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def ready_files(wal_dir: str) -> list[str]:
    """WAL files with a ``.ready`` status (waiting for archive_command): history files first, then by name."""
    try:
        entries = os.listdir(os.path.join(wal_dir, "archive_status"))
    except OSError:
        return []
    names = [e[: -len(".ready")] for e in entries if e.endswith(".ready")]
    return sorted((n for n in names if _walnames.is_wal_file(n)), key=lambda n: (not _walnames.is_history(n), n))


# -- prefetch queue --------------------------------------------------------------------------------------------


def prefetch_dir(spool: str) -> str:
    return os.path.join(spool, "prefetch")


BOOT_ID: Final = "/proc/sys/kernel/random/boot_id"


def boot_id() -> str:
    """This boot's id, or '' where the kernel does not tell (then every queued file is fsynced)."""
    try:
        with open(BOOT_ID) as f:
            return f.read(64).strip()
    except OSError:
        return ""


def _source_line(tag: str) -> str:
    boot = boot_id()
    return f"{tag} {boot}" if boot else tag


def source_matches(spool: str, tag: str) -> bool:
    """Whether the queue holds files of repository ``tag`` written in this boot."""
    try:
        with open(os.path.join(prefetch_dir(spool), ".source")) as f:
            return f.read(128).strip() == _source_line(tag)
    except OSError:
        return False


def take_prefetched(name: str, dest: str, spool: str, tag: str) -> bool:
    """Hand over a prefetched ``name`` as ``dest`` by rename (copy + fsync + rename across filesystems)."""
    src = os.path.join(prefetch_dir(spool), name)
    if not source_matches(spool, tag) or not os.path.isfile(src):
        return False
    try:
        os.replace(src, dest)
        return True
    except OSError as e:
        if e.errno != errno.EXDEV:
            return False
    try:
        with open(src, "rb") as fin:  # into pg_wal: durable (recovery reads it next)
            _fsutil().write_atomic(dest, iter(lambda: fin.read(1 << 20), b""), mode=0o600, sync=True)
    except OSError:
        return False
    _unlink(src)
    return True


def remove_stale_temps(dest: str) -> list[str]:
    """Remove the temporary files that interrupted deliveries to ``dest`` left beside it; returns their names.

    A killed restore_command (SIGKILL, or the SIGTERM PostgreSQL sends its process group at shutdown) cannot
    clean up, and nobody else would: PostgreSQL ignores dot files in pg_wal. It runs one restore_command at a time
    for a destination, so such a file is never one being written.
    """
    directory, base = os.path.split(dest)
    prefix = f".{base}."
    try:
        names = os.listdir(directory or ".")
    except OSError:
        return []
    return [
        n
        for n in names
        if n.startswith(prefix)
        and n.endswith(".tmp")
        and len(n) == len(prefix) + 12
        and _unlink(os.path.join(directory, n))
    ]


def note_wanted(spool: str, name: str) -> None:
    """Record the segment restore_command just asked for, so that a running prefetcher works ahead of it."""
    directory = ensure_dir(prefetch_dir(spool))
    _atomic_write_text(os.path.join(directory, ".wanted"), name + "\n", sync=False)  # a hint


def read_wanted(spool: str) -> str | None:
    try:
        with open(os.path.join(prefetch_dir(spool), ".wanted")) as f:
            name = f.read(64).strip()
    except OSError:
        return None
    return name if _walnames.is_segment(name) else None


def prefetched(spool: str) -> list[str]:
    """Names of the complete files in the prefetch queue."""
    try:
        return sorted(n for n in os.listdir(prefetch_dir(spool)) if _walnames.is_wal_file(n))
    except OSError:
        return []


def queue_is_full(name: str, spool: str, count: int, segment_size: int) -> bool:
    """True when the next ``count`` // 2 segments after ``name`` are already in the queue."""
    have = set(prefetched(spool))
    tli, segno = _walnames.timeline_of(name), _walnames.segment_number(name, segment_size)
    ahead = max(1, count // 2)
    return all(_walnames.segment_name(tli, segno + i, segment_size) in have for i in range(1, ahead + 1))


class spool_lock:  # used like a function: ``with spool_lock(spool) as got:``
    """Hold ``<spool>/<name>`` (``prefetch.lock``: the prefetcher's; the WAL worker has its own) for a ``with``
    block; ``as`` gives False (holding nothing) if it is taken.

    ``fd``: a descriptor of the lock file inherited from the process that took the lock for us (wal-fetch locks
    before it starts the prefetcher, so that no moment exists in which the queue looks unattended).
    """

    def __init__(self, spool: str, *, wait: bool = False, fd: int | None = None, name: str = "prefetch.lock") -> None:
        self._path, self._wait, self._given, self._fd = os.path.join(ensure_dir(spool), name), wait, fd, -1

    def __enter__(self) -> bool:
        if self._given is not None:
            self._fd = self._given
        else:
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | (0 if self._wait else fcntl.LOCK_NB))
        except BlockingIOError:
            return False
        except BaseException:
            os.close(self._fd)
            self._fd = -1
            raise
        return True

    def __exit__(self, *exc: object) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # releases the flock
            self._fd = -1


def prefetch_running(spool: str) -> bool:
    """Whether a prefetch process holds the spool's lock right now."""
    if not os.path.exists(os.path.join(spool, "prefetch.lock")):
        return False
    try:
        with spool_lock(spool) as got:
            return not got
    except OSError:
        return False


def spawn_prefetch(
    name: str,
    spool: str,
    *,
    repo_url: str,
    storage_options: Mapping[str, Any] | None = None,
    count: int = 8,
    parallel: int = 4,
    segment_size: int = _walnames.DEFAULT_SEGMENT_SIZE,
    python: str | None = None,
) -> bool:
    """Start the detached ``wal-prefetch`` process unless one is running; True if one was started.

    The repository URL and storage options go through the child's environment, not its command line (``ps``
    shows command lines to every user).
    """
    for child in list(_children):
        if child.poll() is not None:
            _children.remove(child)
    # The lock is taken here and handed to the child: it is held from now until the child exits.
    cmd, env = _prefetcher_command(name, spool, repo_url, storage_options, count, parallel, segment_size, python)
    started = _walclient.start_holding(ensure_dir(spool), "prefetch.lock", cmd, env)
    if started is None:
        return False  # a prefetcher is running
    _children.append(started)
    return True


def _prefetcher_command(
    name: str,
    spool: str,
    repo_url: str,
    storage_options: Mapping[str, Any] | None,
    count: int,
    parallel: int,
    segment_size: int,
    python: str | None,
) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    env["PGRECOVERY_REPO"] = repo_url
    env.pop(OPTIONS_ENV, None)
    if storage_options:
        import json

        env[OPTIONS_ENV] = json.dumps(dict(storage_options))
    cmd = [python or sys.executable, "-m", "pgrecovery", "wal-prefetch", name, "--spool", spool]
    cmd += ["--count", str(count), "--parallel", str(parallel), "--segment-size", str(segment_size)]
    return cmd, env


def after_fetch(
    name: str,
    spool: str,
    *,
    repo_url: str,
    storage_options: Mapping[str, Any] | None = None,
    count: int = 8,
    parallel: int = 4,
    segment_size: int = _walnames.DEFAULT_SEGMENT_SIZE,
) -> bool:
    """After delivering segment ``name``: note it as wanted and, if the queue runs short, have the WAL worker or a
    new process prefetch."""
    if count <= 0 or not _walnames.is_segment(name):
        return False
    note_wanted(spool, name)
    if queue_is_full(name, spool, count, segment_size):
        return False
    if _walclient.ask(spool, f"prefetch {repo_tag(repo_url)} {name}", 2.0) == "ok":
        return True  # a running WAL worker prefetches in a thread: no program start
    return spawn_prefetch(
        name,
        spool,
        repo_url=repo_url,
        storage_options=storage_options,
        count=count,
        parallel=parallel,
        segment_size=segment_size,
    )


def clear_prefetched(
    spool: str, keep: set[str] | Callable[[str], bool] | None = None, *, temps: bool = True
) -> list[str]:
    """Remove queued files not in ``keep`` (names, or a test of a name: a file that lands meanwhile is judged
    too), and (``temps``) leftovers of interrupted downloads: only where no download of this process is under way."""
    directory = prefetch_dir(spool)
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    kept = keep if callable(keep) else (keep or set()).__contains__
    return [
        n
        for n in names
        if ((temps and n.endswith(".tmp")) or (_walnames.is_wal_file(n) and not kept(n)))
        and _unlink(os.path.join(directory, n))
    ]


def set_source(spool: str, tag: str) -> bool:
    """Make the queue belong to repository ``tag`` in this boot (emptying it if it held another repository's
    files, or files of an earlier boot); whether queued files must be fsynced (only where the boot is unknown)."""
    directory = ensure_dir(prefetch_dir(spool))
    if not source_matches(spool, tag):
        clear_prefetched(spool)
        # durable, with the removals above (one directory): the queue must never hold another repository's files
        # under this tag after a crash
        _atomic_write_text(os.path.join(directory, ".source"), _source_line(tag) + "\n", sync=True)
    return not boot_id()


if __name__ == "__main__":
    # Older pgrecovery wrote archive_command / restore_command as ``python -S .../pgrecovery/_spool.py ...``.
    # Such a setting must keep working after an upgrade (a script that did nothing and exited 0 would tell
    # PostgreSQL that every segment was archived): run the entry script beside this file in its place.
    import runpy

    runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "_walcmd.py"), run_name="__main__")
