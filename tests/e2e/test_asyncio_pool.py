"""The asyncio pool (``--pool asyncio``): one child, one event loop, up to ``-c`` task coroutines at once.

Real workers on SQLite and Redis. Each test checks one of the pool's own promises: many coroutines
at once, time limits and terminate-revocation that end one coroutine and spare its siblings, a
graceful stop, a ``kill -9`` that loses nothing, and sync tasks run on threads.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from conveyor import App, State
from tests.apps.e2e_app import marks, runs_of
from tests.e2e.conftest import WorkerProcess, enqueue, wait_until
from tests.e2e.test_worker import depth

pytestmark = pytest.mark.parametrize("e2e_env", ["sqlite", "redis"], indirect=True)


def child_pids(worker: WorkerProcess) -> list[int]:
    return [child.pid for child in psutil.Process(worker.proc.pid).children()]


def pids_of(records: Path, tag: str) -> set[int]:
    path = records / f"{tag}.runs"
    return {int(line) for line in path.read_text().split()} if path.exists() else set()


def test_two_thousand_coroutines_awaiting_half_a_second_finish_far_faster_than_one_by_one(
    e2e_app: App, start_worker: Callable[..., WorkerProcess], records: Path
) -> None:
    # Given a worker with one loop of 1000 slots
    worker = start_worker("--pool", "asyncio", "-c", "1000")
    assert len(child_pids(worker)) == 1
    # When 2,000 tasks that each await 0.5 s are sent (1,000 s one by one)
    from tests.apps import e2e_app as tasks

    started = time.monotonic()
    for first in range(0, 2000, 500):
        e2e_app.send([tasks.async_mark.message((i, 0.5)) for i in range(first, first + 500)])
    # Then every one runs exactly once, within a bounded time (at least 1 s: two waves of 0.5 s)
    wait_until(lambda: len(marks(records)) >= 2000 and depth(e2e_app)[2] == 0, 60, "2,000 tasks to finish")
    elapsed = time.monotonic() - started
    assert sorted(marks(records)) == list(range(2000))
    assert 1.0 <= elapsed < 60


def test_a_soft_time_limit_fails_the_task_after_its_cleanup_and_spares_its_siblings(
    e2e_app: App, start_worker: Callable[..., WorkerProcess], records: Path
) -> None:
    # Given a worker running a task past its soft limit (0.5 s) beside one awaiting 1 s
    start_worker("--pool", "asyncio", "-c", "10")
    soft = enqueue(e2e_app, "async_soft", "soft")
    sibling = enqueue(e2e_app, "async_nap", "sibling", 1.0)
    # Then the task fails with TimeLimitExceeded once its finally block ran, and the sibling succeeds
    wait_until(lambda: soft.state is State.FAILURE, 15, "the task to fail on its soft limit")
    info = soft.info
    assert info is not None and info.error is not None and info.error.type == "TimeLimitExceeded"
    assert runs_of(records, "soft") == 1 and (records / "soft.cleanup").exists()
    assert sibling.get(timeout=15) == "sibling"


def test_a_hard_time_limit_cancels_only_that_coroutine(
    e2e_app: App, start_worker: Callable[..., WorkerProcess], records: Path
) -> None:
    # Given a worker running a task with a 1 s hard limit that awaits 60 s, beside three awaiting 3 s
    worker = start_worker("--pool", "asyncio", "-c", "10")
    [child] = child_pids(worker)
    hung = enqueue(e2e_app, "async_hang", "hang")
    siblings = [enqueue(e2e_app, "async_nap", f"sib{i}", 3.0) for i in range(3)]
    # Then the task is recorded FAILURE (TimeLimitExceeded) while its siblings still run
    wait_until(lambda: hung.state is State.FAILURE, 10, "the task to fail on its hard limit")
    info = hung.info
    assert info is not None and info.error is not None and info.error.type == "TimeLimitExceeded"
    assert all(s.state is State.STARTED for s in siblings)
    # And the siblings finish in the same child, which was not replaced; the task did not run again
    assert [s.get(timeout=15) for s in siblings] == ["sib0", "sib1", "sib2"]
    assert child_pids(worker) == [child] and pids_of(records, "sib0") == {child}
    assert runs_of(records, "hang") == 1
    assert "died" not in worker.output()


def test_a_loop_blocked_past_a_hard_limit_fails_that_task_and_returns_the_others(
    e2e_app: App, start_worker: Callable[..., WorkerProcess], records: Path
) -> None:
    # Given a worker whose loop a task blocks (a sync sleep in a coroutine) past its 1 s hard limit
    worker = start_worker("--pool", "asyncio", "-c", "10")
    [child] = child_pids(worker)
    sibling = enqueue(e2e_app, "async_nap", "sibling", 0.5)
    wait_until(lambda: runs_of(records, "sibling") == 1, 10, "the sibling to start")
    blocker = enqueue(e2e_app, "async_blocker", "blocker")
    # Then the blocking task is recorded FAILURE (TimeLimitExceeded) and the child replaced
    wait_until(lambda: blocker.state is State.FAILURE, 15, "the blocking task to fail")
    info = blocker.info
    assert info is not None and info.error is not None and info.error.type == "TimeLimitExceeded"
    wait_until(lambda: child_pids(worker) not in ([], [child]), 10, "a new child")
    # And the sibling it held up completes (run again by the new child if it had not finished); the blocker never reruns
    assert sibling.get(timeout=15) == "sibling"
    assert runs_of(records, "blocker") == 1


def test_terminate_revocation_cancels_only_that_coroutine(
    e2e_app: App, start_worker: Callable[..., WorkerProcess], records: Path
) -> None:
    # Given a worker running a task that awaits 60 s beside one awaiting 4 s
    worker = start_worker("--pool", "asyncio", "-c", "10")
    [child] = child_pids(worker)
    doomed = enqueue(e2e_app, "async_nap", "doomed", 60.0)
    sibling = enqueue(e2e_app, "async_nap", "sibling", 4.0)
    wait_until(lambda: runs_of(records, "doomed") == 1 and runs_of(records, "sibling") == 1, 10, "both to start")
    # When the long one is revoked with terminate=True
    assert doomed.revoke(terminate=True) is False
    # Then its coroutine is cancelled within a few seconds, acked, and never ends; the sibling finishes
    wait_until(lambda: "was revoked and terminated" in worker.output(), 10, "the task to be terminated")
    assert sibling.get(timeout=15) == "sibling"
    assert doomed.state is State.REVOKED and not (records / "doomed.ends").exists()
    wait_until(lambda: depth(e2e_app)[2] == 0, 10, "nothing left in flight")
    assert child_pids(worker) == [child] and runs_of(records, "doomed") == 1


def test_sigterm_finishes_running_coroutines_and_returns_unstarted_tasks(
    e2e_app: App, start_worker: Callable[..., WorkerProcess], records: Path
) -> None:
    # Given a worker with 3 slots running 3 tasks that await 2 s, with 4 more waiting in the queue
    worker = start_worker("--pool", "asyncio", "-c", "3")
    running = [enqueue(e2e_app, "async_nap", f"run{i}", 2.0) for i in range(3)]
    wait_until(lambda: all(runs_of(records, f"run{i}") == 1 for i in range(3)), 10, "3 tasks to start")
    waiting = [enqueue(e2e_app, "async_nap", f"wait{i}", 0.0) for i in range(4)]
    # When it gets SIGTERM
    worker.proc.send_signal(signal.SIGTERM)
    # Then it exits cleanly once the running tasks finished; the waiting ones did not run and are still queued
    assert worker.proc.wait(timeout=20) == 0
    assert [r.state for r in running] == [State.SUCCESS] * 3
    assert all(runs_of(records, f"wait{i}") == 0 for i in range(4))
    assert {w.state for w in waiting} == {State.PENDING}
    assert depth(e2e_app)[0] == 4 and depth(e2e_app)[2] == 0


def test_kill_9_of_the_child_loses_no_running_task(
    e2e_app: App, start_worker: Callable[..., WorkerProcess], records: Path
) -> None:
    # Given a worker running 20 coroutines that await 3 s
    worker = start_worker("--pool", "asyncio", "-c", "50")
    [child] = child_pids(worker)
    results = [enqueue(e2e_app, "async_nap", f"t{i}", 3.0) for i in range(20)]
    wait_until(lambda: all(runs_of(records, f"t{i}") >= 1 for i in range(20)), 10, "20 tasks to start")
    # When its child is killed with SIGKILL
    os.kill(child, signal.SIGKILL)
    # Then a new child runs every task again, and all succeed
    assert [r.get(timeout=30) for r in results] == [f"t{i}" for i in range(20)]
    assert child not in child_pids(worker)
    assert all(runs_of(records, f"t{i}") == 2 for i in range(20))


def test_sync_tasks_run_on_threads_beside_the_coroutines(
    e2e_app: App, start_worker: Callable[..., WorkerProcess], records: Path
) -> None:
    # Given a worker with one loop, running a sync task that sleeps 2 s
    worker = start_worker("--pool", "asyncio", "-c", "10")
    [child] = child_pids(worker)
    slow_sync = enqueue(e2e_app, "record", "sync", 2.0)
    wait_until(lambda: runs_of(records, "sync") == 1, 10, "the sync task to start")
    # When an async task is sent meanwhile
    quick = enqueue(e2e_app, "async_nap", "async", 0.0)
    # Then the async task completes while the sync one still sleeps (the loop is not blocked)
    assert quick.get(timeout=1.5) == "async"
    assert slow_sync.state is State.STARTED
    # And the sync task completes too, in the same child, as do failures of sync tasks
    assert slow_sync.get(timeout=10) == "sync"
    assert pids_of(records, "sync") == {child}
    failed = enqueue(e2e_app, "boom", "boom")
    wait_until(lambda: failed.state is State.FAILURE, 10, "the sync failure to be recorded")


def test_max_tasks_per_child_retires_the_child_after_its_running_tasks_and_a_new_one_goes_on(
    e2e_env: dict[str, str], e2e_app: App, start_worker: Callable[..., WorkerProcess], records: Path
) -> None:
    # Given a worker whose child retires after 5 tasks
    e2e_env["CONVEYOR_MAX_TASKS_PER_CHILD"] = "5"
    worker = start_worker("--pool", "asyncio", "-c", "10")
    [first] = child_pids(worker)
    # When 12 tasks that await 0.2 s are sent
    results = [enqueue(e2e_app, "async_nap", f"t{i}", 0.2) for i in range(12)]
    # Then every task succeeds once, and more than one child ran them, one after the other
    assert [r.get(timeout=30) for r in results] == [f"t{i}" for i in range(12)]
    assert [runs_of(records, f"t{i}") for i in range(12)] == [1] * 12
    ran_in = set().union(*(pids_of(records, f"t{i}") for i in range(12)))
    assert first in ran_in and len(ran_in) >= 2
    worker.wait_for_log("retired")


def test_a_sync_task_past_its_hard_limit_is_recorded_failure_and_the_child_goes_on(
    e2e_app: App, start_worker: Callable[..., WorkerProcess], records: Path
) -> None:
    # Given a worker running a sync task with a 1 s hard limit that sleeps 60 s on its thread
    worker = start_worker("--pool", "asyncio", "-c", "10")
    [child] = child_pids(worker)
    hung = enqueue(e2e_app, "hang", "hang")
    # Then the task is recorded FAILURE (TimeLimitExceeded), and the child, not replaced, serves on
    wait_until(lambda: hung.state is State.FAILURE, 10, "the sync task to fail on its hard limit")
    info = hung.info
    assert info is not None and info.error is not None and info.error.type == "TimeLimitExceeded"
    assert enqueue(e2e_app, "async_nap", "after", 0.0).get(timeout=10) == "after"
    assert child_pids(worker) == [child] and runs_of(records, "hang") == 1
