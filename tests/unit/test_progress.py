"""The progress meter: estimates while running, the exact count at the end."""

from __future__ import annotations

import pytest

from pgrecovery.progress import Meter, Progress


def _meter(total: int | None) -> tuple[Meter, list[Progress]]:
    events: list[Progress] = []
    return Meter("restore", events.append, total=total, interval=0), events


@pytest.mark.parametrize(("estimate", "done"), [(100, 120), (100, 80), (100, 100), (None, 70), (0, 5)])
def test_the_finished_event_says_exactly_what_was_done(estimate: int | None, done: int) -> None:
    meter, events = _meter(estimate)
    for _ in range(done // 5):
        meter.add(5)
    meter.finish()
    last = events[-1]
    assert last.finished
    assert (last.done, last.total) == (done, done)
    assert all(not e.finished for e in events[:-1])


def test_a_running_estimate_is_never_below_the_count() -> None:
    meter, events = _meter(100)
    for _ in range(30):
        meter.add(5)
    running = [e for e in events if not e.finished]
    assert running
    assert all(e.total is not None and e.done <= e.total for e in running)
    assert [e.total for e in running][:20] == [100] * 20  # the estimate stands while it holds


def test_an_estimate_given_later_is_used() -> None:
    meter, events = _meter(None)
    meter.add(10)
    meter.total = 40  # a base backup knows its size once the data directory is scanned
    meter.add(10)
    assert [e.total for e in events] == [None, 40]
    meter.finish()
    assert events[-1].total == 20


def test_no_callback_costs_nothing() -> None:
    meter = Meter("backup", None, total=10)
    meter.add(20)
    meter.finish()
    assert meter.done == meter.total == 20
