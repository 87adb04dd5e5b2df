"""The backlog's watch: when a running task counts as long, so its prefetched batch-mates go back.

The task runs in the test's thread (the thread that started the backlog), as in a process-pool child.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from conveyor.brokers import Delivery
from conveyor.worker.backlog import FAST_BATCH, GROWTH, Backlog, BatchSize

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


def test_a_batch_grows_while_full_batches_run_fast_and_falls_back_after_any_other() -> None:
    # Given the batch size of a child whose prefetch setting is 16
    size = BatchSize(16)
    assert size.next == 16
    # When full batches keep running faster than FAST_BATCH: it doubles, up to GROWTH times the setting
    grown = []
    for _ in range(4):
        size.ran(size.next, FAST_BATCH / 2)
        grown.append(size.next)
    assert grown == [32, 64, 64, 64] and GROWTH * 16 == 64
    # Then a short batch (the queue ran low) brings it back to the setting at once
    size.ran(10, FAST_BATCH / 2)
    assert size.next == 16
    # And so does a full batch that ran slowly (its tasks are not that short), or one that ran only in part
    # (a long task gave its batch-mates back)
    size.ran(16, FAST_BATCH / 2)
    size.ran(32, FAST_BATCH * 2)
    assert size.next == 16
    size.ran(16, FAST_BATCH / 2)
    size.ran(31, FAST_BATCH / 2)
    assert size.next == 16


def test_a_prefetch_of_one_never_grows() -> None:
    # Given prefetching turned off (prefetch = 1), When single tasks keep running fast
    size = BatchSize(1)
    for _ in range(3):
        size.ran(1, 0.0)
    # Then each reservation still takes one
    assert size.next == 1
