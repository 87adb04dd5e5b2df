"""The backlog's watch: when a running task counts as long, so its prefetched batch-mates go back.

The task runs in the test's thread (the thread that started the backlog), as in a process-pool child.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from conveyor.brokers import Delivery
from conveyor.worker.backlog import Backlog

HOLD = 0.005


@pytest.fixture
def watched() -> Iterator[tuple[Backlog, threading.Event]]:
    """A backlog with a 5 ms hold whose watch sets an event when it finds the running task long."""
    found_long = threading.Event()
    backlog = Backlog(HOLD, found_long.set)
    backlog.start()
    backlog.fill([Delivery(f"id{i}", "default", b"", 0, 1, f"t{i}", "me") for i in range(3)])
    yield backlog, found_long
    backlog.stop()


def _run(backlog: Backlog, found_long: threading.Event, task: Callable[[], None]) -> float | None:
    """Start the next delivery, run ``task`` in this thread; seconds until the watch found it long, or None."""
    assert backlog.next() is not None
    start = time.monotonic()
    task()
    found = found_long.is_set()
    backlog.finished()
    return time.monotonic() - start if found else None


@pytest.mark.timeout(10)
def test_a_sleeping_task_is_found_long_and_a_no_op_is_not(watched: tuple[Backlog, threading.Event]) -> None:
    # Given a backlog holding batch-mates behind the running task
    backlog, found_long = watched
    # When a no-op task runs, then one that sleeps (an I/O-bound long task)
    assert _run(backlog, found_long, lambda: None) is None
    assert _run(backlog, found_long, lambda: _wait_for(found_long, time.sleep)) is not None


@pytest.mark.timeout(10)
def test_a_computing_task_is_found_long(watched: tuple[Backlog, threading.Event]) -> None:
    # Given a backlog holding batch-mates behind the running task
    backlog, found_long = watched
    # When the task computes (the watch samples its CPU time while it stays runnable)
    # Then the watch finds it long (it ran 5 ms on a CPU since the wall-clock hold passed)
    assert _run(backlog, found_long, lambda: _wait_for(found_long, _spin)) is not None


def _wait_for(event: threading.Event, step: Callable[[float], None]) -> None:
    deadline = time.monotonic() + 5
    while not event.is_set() and time.monotonic() < deadline:
        step(0.001)


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
