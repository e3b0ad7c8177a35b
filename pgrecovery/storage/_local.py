"""The local disk: the durable no-clobber writer (built on `pgrecovery._fsutil`) and the helpers that list and
remove local trees."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import time

from .._fsutil import makedirs_durable, publish, release_pages, temp_path
from .._objects import HashingWriter, StoredObject
from ..errors import AlreadyExists, StorageError
from ._retry import reason


class LocalWriter(HashingWriter):
    """Temp file beside the target, fsync, hard link (no clobber) or rename, fsync of the directory
    (`pgrecovery._fsutil`'s durable write, streamed)."""

    def __init__(self, key: str, path: str, overwrite: bool) -> None:
        super().__init__(key)
        self._path = path
        self._overwrite = overwrite
        makedirs_durable(os.path.dirname(path))
        self._tmp = temp_path(path)
        if not overwrite and os.path.lexists(path):
            raise AlreadyExists(f"refusing to overwrite {key!r}: it is already in the repository")
        self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)

    def _write_raw(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError as e:
            raise StorageError(f"cannot write {self.key!r}: {reason(e)}") from e

    def commit(self) -> StoredObject:
        try:
            os.fsync(self._fd)
            release_pages(self._fd)  # (clean now)
            os.close(self._fd)
            self._fd = -1
            try:  # without overwrite a hard link, which fails if the target exists: no silent overwrite
                publish(self._tmp, self._path, overwrite=self._overwrite)
            except FileExistsError:
                raise AlreadyExists(
                    f"refusing to overwrite {self.key!r}: it appeared in the repository during the write"
                ) from None
        except BaseException as e:
            self.abort()
            if isinstance(e, OSError):  # the directory vanished (removed meanwhile), no space, no permission
                raise StorageError(f"cannot store {self.key!r}: {reason(e)}") from e
            raise
        return self._result()

    def abort(self) -> None:
        self._done = True
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)


class ReadOnce(io.BufferedReader):
    """A local object opened to be read through once: its pages leave the page cache when it is closed
    (`pgrecovery._fsutil.release_pages`; a small object's stay)."""

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(OSError, ValueError):
                release_pages(self.fileno())
        super().close()


def open_once(path: str, buffering: int) -> ReadOnce:
    return ReadOnce(io.FileIO(path, "rb"), buffer_size=buffering)


def local_dir(path: str) -> bool:
    """Whether a local directory exists. Unlike `os.path.isdir`, a directory that cannot be looked at (no
    permission) raises instead of reading as absent: a repository we may not read is not an empty one."""
    import stat

    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False


def remove_tree(path: str) -> None:
    """``rm -r`` that another process may be doing at the same moment (two `expire` runs, say): what the other
    removed first is not an error, and a directory that gained an entry meanwhile (a marker another process
    rewrote) is emptied again. The goal, nothing left, is what counts."""
    import shutil

    def gone_is_fine(_func: object, _path: str, exc_info: tuple[type[BaseException], BaseException, object]) -> None:
        if not isinstance(exc_info[1], FileNotFoundError):
            raise exc_info[1]

    for attempt in range(1, 11):
        try:
            shutil.rmtree(path, onerror=gone_is_fine)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.ENOTEMPTY or attempt == 10:
                raise
            time.sleep(0.01 * attempt)


def mtime(path: str) -> float:
    try:
        return os.path.getmtime(path)
    except OSError:
        return float("inf")  # gone meanwhile: not stale
