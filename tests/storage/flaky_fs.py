"""Fault injection: an fsspec filesystem that wraps a real one and makes a share of its operations fail.

`FlakyFileSystem(inner, plan)` passes everything to ``inner`` (a real s3fs / adlfs / gcsfs instance talking to an
emulator) but, as `FaultPlan` decides, raises the errors a real network gives: connection resets, timeouts,
throttling (``SlowDown``), 503 answers, a server that hangs up. Three kinds of faults:

* ``before``: the operation fails before reaching the server (nothing happened);
* ``lost``: the operation reaches the server and succeeds there, but the answer is lost (the caller sees an
  error for something that was done: the hardest case for "never report success for an incomplete object", and
  for "never fail a write that actually landed");
* ``cut``: an upload's connection drops while its bytes are being sent (the upload is left half done).

Use it as ``Repository(fs=FlakyFileSystem(real_fs, plan), root="bucket/prefix")``.
"""

from __future__ import annotations

import errno
import random
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

from fsspec import AbstractFileSystem

T = TypeVar("T")


class ServerDisconnectedError(ConnectionError):
    """Named like aiohttp's: the server closed the connection (pgrecovery recognises it by name)."""


class ServiceUnavailable(Exception):
    """An HTTP 503 answer, as an exception with a status code (like azure-core's HttpResponseError)."""

    status_code = 503


def _transient_errors() -> list[Callable[[str], BaseException]]:
    return [
        lambda what: ConnectionResetError(errno.ECONNRESET, f"connection reset by peer during {what} (injected)"),
        lambda what: TimeoutError(f"{what} timed out (injected)"),
        lambda what: OSError(errno.EBUSY, f"SlowDown: please reduce your request rate ({what}, injected)"),
        lambda what: ServiceUnavailable(f"503 Service Unavailable for {what} (injected)"),
        lambda what: ServerDisconnectedError(f"server disconnected during {what} (injected)"),
    ]


class FaultPlan:
    """Decides which operations fail, reproducibly (seeded), and counts what it did.

    ``rate``: share of operations that fail before reaching the server; ``lost_rate``: share of successful
    writes/commits/deletes whose answer is lost; ``cut_rate``: share of upload writes whose connection drops.
    """

    def __init__(self, *, rate: float = 0.2, lost_rate: float = 0.1, cut_rate: float = 0.05, seed: int = 7) -> None:
        self.rate, self.lost_rate, self.cut_rate = rate, lost_rate, cut_rate
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._errors = _transient_errors()
        self.counts: Counter[str] = Counter()
        self.enabled = True

    def _roll(self, p: float) -> bool:
        with self._lock:
            return self.enabled and self._random.random() < p

    def _error(self, what: str) -> BaseException:
        with self._lock:
            return self._random.choice(self._errors)(what)

    def before(self, what: str) -> None:
        if self._roll(self.rate):
            self.counts[f"before:{what}"] += 1
            raise self._error(what)

    def lost(self, what: str) -> None:
        if self._roll(self.lost_rate):
            self.counts[f"lost:{what}"] += 1
            raise self._error(what)

    def cut(self, what: str) -> None:
        if self._roll(self.cut_rate):
            self.counts[f"cut:{what}"] += 1
            raise ConnectionResetError(errno.ECONNRESET, f"connection dropped mid-{what} (injected)")

    def total(self, kind: str) -> int:
        return sum(n for k, n in self.counts.items() if k.startswith(f"{kind}:"))


class FlakyFileSystem(AbstractFileSystem):  # type: ignore[misc]
    """A real filesystem behind an unreliable network (see the module docstring)."""

    cachable = False

    def __init__(self, inner: AbstractFileSystem, plan: FaultPlan) -> None:
        super().__init__()
        self.inner, self.plan = inner, plan
        self.protocol = inner.protocol
        self.storage_options = {}

    def _strip_protocol(self, path: str) -> str:  # type: ignore[override]
        return str(self.inner._strip_protocol(path))

    def invalidate_cache(self, path: str | None = None) -> None:
        self.inner.invalidate_cache(path)

    def _call(self, what: str, op: Callable[[], T], *, mutates: bool = False) -> T:
        self.plan.before(what)
        result = op()
        if mutates:
            self.plan.lost(what)
        return result

    # -- what Repository uses ------------------------------------------------------------------------------
    def exists(self, path: str, **kwargs: Any) -> bool:
        return self._call("exists", lambda: bool(self.inner.exists(path, **kwargs)))

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        return self._call("info", lambda: dict(self.inner.info(path, **kwargs)))

    def size(self, path: str) -> int:
        return self._call("size", lambda: int(self.inner.size(path)))

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        return self._call("list", lambda: list(self.inner.ls(path, detail=detail, **kwargs)))

    def find(self, path: str, *args: Any, **kwargs: Any) -> Any:
        return self._call("list", lambda: self.inner.find(path, *args, **kwargs))

    def rm_file(self, path: str) -> None:
        self._call("delete", lambda: self.inner.rm_file(path), mutates=True)

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        self._call("delete", lambda: self.inner.rm(path, recursive=recursive, maxdepth=maxdepth), mutates=True)

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        def put() -> None:
            self.plan.cut("put")
            self.inner.pipe_file(path, value, mode=mode, **kwargs)

        self._call("put", put, mutates=True)

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        f = self._call("open", lambda: self.inner._open(path, mode, **kwargs))
        return FlakyReadFile(f, self.plan) if "r" in mode else FlakyWriteFile(f, self.plan)


class _Proxy:
    _own = frozenset({"_f", "_plan"})

    def __init__(self, f: Any, plan: FaultPlan) -> None:
        object.__setattr__(self, "_f", f)
        object.__setattr__(self, "_plan", plan)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._f, name, value)  # blocksize, forced, closed: the writer tunes the real file

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


class FlakyReadFile(_Proxy):
    def read(self, n: int = -1) -> bytes:
        self._plan.before("read")
        return bytes(self._f.read(n))


class FlakyWriteFile(_Proxy):
    def write(self, data: Any) -> int:
        self._plan.cut("upload")  # the connection of a part upload drops
        return int(self._f.write(data))

    def close(self) -> None:
        if not getattr(self._f, "forced", True):  # the call that finishes the upload (Azure: that commits it)
            self._plan.before("close")
            self._f.close()
            self._plan.lost("close")
        else:
            self._f.close()

    def commit(self) -> None:
        self._plan.before("commit")
        self._f.commit()
        self._plan.lost("commit")

    def discard(self) -> None:
        self._f.discard()
