"""Durable local files, written one way: complete under their name, or not there at all.

A temporary file in the same directory (``.<name>.<random>.tmp``, which listings skip), written and fsynced,
then renamed over the name (or hard-linked to it, which refuses an existing name), then the directory fsynced so
that the new entry survives a crash too. Standard library only, and not even ``typing`` at run time: the WAL
commands' fast path (``python -S``) uses it.
"""

from __future__ import annotations

import contextlib
import os

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs milliseconds on the fast path
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from typing import BinaryIO


def temp_path(path: str) -> str:
    """A fresh temporary name beside ``path`` (hidden, ends in ``.tmp``)."""
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}.{os.urandom(4).hex()}.tmp")


def is_temp_name(name: str) -> bool:
    """Whether a file name is one of `temp_path`'s."""
    return name.startswith(".") and name.endswith(".tmp")


def fsync_dir(path: str) -> None:
    """fsync a directory, so that the entries made or removed in it are durable."""
    fd = os.open(path or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def makedirs_durable(path: str, mode: int = 0o750) -> None:
    """``mkdir -p``, fsyncing each parent whose entries changed."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent and parent != path:
        makedirs_durable(parent, mode)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        return
    fsync_dir(parent or ".")


def publish(tmp: str, path: str, *, overwrite: bool = True, sync: bool = True) -> None:
    """Give the (written, fsynced) file ``tmp`` its name ``path``: renamed over it, or with ``overwrite=False``
    hard-linked (``FileExistsError`` when the name is taken: never a silent overwrite). Then the directory is
    fsynced (unless ``sync`` is off: a cache that may be lost)."""
    if overwrite:
        os.replace(tmp, path)
    else:
        os.link(tmp, path)
        os.unlink(tmp)
    if sync:
        fsync_dir(os.path.dirname(path))


@contextlib.contextmanager
def atomic_file(
    path: str,
    *,
    mode: int = 0o640,
    overwrite: bool = True,
    sync: bool = True,
    before_publish: Callable[[str], object] | None = None,
) -> Iterator[BinaryIO]:
    """A binary file to write ``path`` through: it gets its name only when the block ends without an error
    (fsynced and published as the module docstring says); on an error the temporary file is removed.

    ``sync=False`` skips both fsyncs, for files whose loss costs only speed or that something else syncs (a
    spool's markers; files restored into a data directory, which PostgreSQL syncs when it starts).
    ``before_publish``: called with the complete file's temporary path just before it gets its name.
    """
    tmp = temp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb", closefd=True) as f:
            yield f
            f.flush()
            if sync:
                os.fsync(f.fileno())
        if before_publish is not None:
            before_publish(tmp)
        publish(tmp, path, overwrite=overwrite, sync=sync)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_atomic(
    path: str, data: bytes | str | Iterable[bytes], *, mode: int = 0o640, overwrite: bool = True, sync: bool = True
) -> None:
    """Write ``path`` whole (bytes, text as UTF-8, or chunks) or not at all: `atomic_file` with the data."""
    chunks = [data.encode()] if isinstance(data, str) else [data] if isinstance(data, bytes) else data
    with atomic_file(path, mode=mode, overwrite=overwrite, sync=sync) as f:
        for chunk in chunks:
            f.write(chunk)


def remove_stale_temps(directory: str, names: Iterable[str] | None = None) -> None:
    """Remove temporary files (`temp_path`'s) in ``directory`` that a killed writer left; quietly."""
    try:
        found = names if names is not None else os.listdir(directory)
    except OSError:
        return
    for name in found:
        if is_temp_name(name):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))


RELEASE_MIN = 1 << 20  # objects this large or larger leave the page cache once written or read (`release_pages`)


def release_pages(fd: int, *, least: int = RELEASE_MIN) -> None:
    """Advise the kernel to drop the cached pages of the open file ``fd`` if it holds ``least`` bytes or more
    (clean ones go at once: call it after an fsync, or after reading). For a repository's objects, written once
    and read once: kept, their pages push the database's own out of memory, and each next write or read takes
    memory never used before where it could reuse what the last one freed (on virtual machines that back guest
    memory lazily, filling such page cache costs tens of times more: measured, docs/performance.md). A hint:
    failures are ignored."""
    try:
        if os.fstat(fd).st_size >= least:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except (OSError, AttributeError):  # AttributeError: a platform without posix_fadvise
        pass


def drop_cache(path: str) -> None:
    """Ask the kernel to drop ``path``'s pages from its cache: clean ones go at once, dirty ones are written back
    in the background first (a later call drops them). A hint: it never changes the file, and failures are
    ignored."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        release_pages(fd, least=0)
    finally:
        os.close(fd)


def postmaster_pid(data_dir: str) -> int | None:
    """The pid on the first line of ``data_dir``'s postmaster.pid: None without the file, 0 when the line is not a
    pid (a server writing the file)."""
    try:
        with open(os.path.join(data_dir, "postmaster.pid")) as f:
            line = f.readline().strip()
    except OSError:
        return None
    return int(line) if line.isdigit() else 0


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (the check behind a pid file: one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


__all__ = [
    "atomic_file",
    "fsync_dir",
    "is_temp_name",
    "makedirs_durable",
    "postmaster_pid",
    "process_alive",
    "publish",
    "remove_stale_temps",
    "temp_path",
    "write_atomic",
]
