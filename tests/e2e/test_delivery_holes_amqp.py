"""Delivery holes of issue 11 on RabbitMQ, end to end: real workers, a real server, a SQLite result backend.

Item 2: revokes of other ids never count a delivery against waiting tasks. Item 9: a segfault counts
a delivery only against the task that was running, not its prefetched batch-mates. Item 8: a task
holding the GIL longer than the lease runs once, with two live workers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conveyor import App
from tests.apps.e2e_app import runs_of
from tests.e2e.conftest import WorkerProcess, enqueue, wait_until

amqp_only = pytest.mark.parametrize("e2e_env", ["amqp"], indirect=True)


@amqp_only
@pytest.mark.timeout(90)
def test_revoking_another_id_every_half_second_loses_no_waiting_task(
    e2e_app: App, start_worker: Callable[..., WorkerProcess], records: Path, pool: str
) -> None:
    # Given a 1-slot worker with 8 half-second tasks waiting
    worker = start_worker("-c", "1", "--pool", pool)
    results = [enqueue(e2e_app, "record", f"t{i}", 0.5) for i in range(8)]
    # When the producer revokes an unrelated id every 0.25 s until they are done
    deadline = time.monotonic() + 45
    while not all(r.ready() for r in results) and time.monotonic() < deadline:
        e2e_app.result("not-a-task-here").revoke()
        time.sleep(0.25)
    # Then all 8 ran once, in order, and nothing was dead-lettered
    assert [r.get(timeout=5) for r in results] == [f"t{i}" for i in range(8)]
    assert [runs_of(records, f"t{i}") for i in range(8)] == [1] * 8
    assert e2e_app.broker.dead_letters() == []
    assert worker.stop() == 0


@amqp_only
@pytest.mark.timeout(120)
def test_a_segfaulting_task_does_not_take_its_prefetched_batch_mates_to_the_dead_letters(
    e2e_app: App, start_worker: Callable[..., WorkerProcess], records: Path, pool: str
) -> None:
    # Given one task that segfaults its child, sent with five trivial ones (default prefetch, max_deliveries)
    poison = enqueue(e2e_app, "segfault", "poison")
    mates = [enqueue(e2e_app, "record", f"m{i}") for i in range(5)]
    # When a worker takes them as one batch, and the poison keeps killing children
    # (One asyncio slot: the coroutines of a batch all run at once, so a crash counts against every one of them.)
    worker = start_worker("-c", "4" if pool == "thread" else "1", "--pool", pool)
    wait_until(lambda: len(e2e_app.broker.dead_letters()) >= 1, 60, "the poison to be dead-lettered")
    # Then the five batch-mates succeed, and only the poison is dead, after max_deliveries crashes
    assert [r.get(timeout=30) for r in mates] == [f"m{i}" for i in range(5)]
    [dead] = e2e_app.broker.dead_letters()
    assert dead.id == poison.id
    assert runs_of(records, "poison") == 5
    assert worker.stop() == 0


@amqp_only
@pytest.mark.timeout(90)
def test_a_task_holding_the_gil_longer_than_its_lease_runs_once_with_two_live_workers(
    e2e_app: App, start_worker: Callable[..., WorkerProcess], records: Path, pool: str
) -> None:
    # Given two workers with a 2 s lease (the e2e environment), one with four slots
    first = start_worker("-c", "4", "--pool", pool)
    second = start_worker("-c", "4", "--pool", pool)
    # When a task holds the GIL for 6 s (libc sleep through ctypes.PyDLL): its heartbeat thread starves
    result = enqueue(e2e_app, "gil_hold", "gil", 6)
    beside = [enqueue(e2e_app, "record", f"b{i}", 0.2) for i in range(6)]
    # Then it runs exactly once, and the tasks beside it too
    assert result.get(timeout=40) == "gil"
    assert [r.get(timeout=30) for r in beside] == [f"b{i}" for i in range(6)]
    time.sleep(2.5)  # a duplicate would have started by now (lease 2 s)
    assert runs_of(records, "gil") == 1
    assert [runs_of(records, f"b{i}") for i in range(6)] == [1] * 6
    assert first.stop() == 0 and second.stop() == 0
