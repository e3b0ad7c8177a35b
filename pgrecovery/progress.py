"""Progress reporting for long operations: a typed event and a throttled meter that emits it."""

from __future__ import annotations

import time
from collections.abc import Callable

import attrs


@attrs.frozen(kw_only=True)
class Progress:
    """Where a long operation stands.

    While it runs, ``total`` is an estimate made in advance (a data directory's size when the scan ended, a
    backup's recorded size; never below ``done``), or None when nothing is known in advance (a pg_dump stream).
    The last event of a finished operation (``finished=True``) says exactly what was done: ``total == done``.
    """

    operation: str
    done: int
    total: int | None
    elapsed: float
    finished: bool = False

    @property
    def rate(self) -> float:
        """Bytes per second so far."""
        return self.done / self.elapsed if self.elapsed > 0 else 0.0


ProgressCallback = Callable[[Progress], None]


class Meter:
    """Counts bytes and calls the callback at most every ``interval`` seconds, and once at the end.

    ``total`` is the caller's estimate (it may be set later, once known). An estimate the count outgrows is
    raised to the count; `finish` reports the count as the total, so a finished operation reads 100%.
    """

    def __init__(
        self,
        operation: str,
        callback: ProgressCallback | None,
        total: int | None = None,
        interval: float = 0.5,
    ) -> None:
        self.operation, self.callback, self.total, self.interval = operation, callback, total, interval
        self.done = 0
        self._start = self._last = time.monotonic()

    def add(self, n: int) -> None:
        self.done += n
        if self.callback is not None:
            now = time.monotonic()
            if now - self._last >= self.interval:
                self._last = now
                self.callback(self._event(now, False))

    def finish(self) -> None:
        """Report the end of a successful operation: what was done is the total (call it only on success)."""
        self.total = self.done
        if self.callback is not None:
            self.callback(self._event(time.monotonic(), True))

    def _event(self, now: float, finished: bool) -> Progress:
        total = self.total if self.total is None else max(self.total, self.done)
        return Progress(
            operation=self.operation,
            done=self.done,
            total=total,
            elapsed=now - self._start,
            finished=finished,
        )


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"
