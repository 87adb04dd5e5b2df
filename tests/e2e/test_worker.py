"""A real worker process, end to end: results, crashes, kill -9, graceful stop, bad input.

Each test runs with a 2 s lease on every pool: the process pool on SQLite, Redis and RabbitMQ, the
thread and asyncio pools on Redis (the e2e_env and pool fixtures, tests/e2e/conftest.py). A second
stop signal is tests/e2e/test_failures.py (``test_hard_stop_...``).
"""

from __future__ import annotations

import datetime
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conveyor import App, State, TaskFailed, TimeLimitExceeded
from conveyor.brokers import Envelope
from tests.apps.e2e_app import runs_of
from tests.conftest import load_factor
from tests.e2e.conftest import WorkerProcess, enqueue, pool_args, wait_until


def depth(app: App) -> tuple[int, int, int, int]:
    total = [0, 0, 0, 0]
    for s in app.broker.stats():
        for i, n in enumerate((s.ready, s.scheduled, s.in_flight, s.dead)):
            total[i] += n
    return total[0], total[1], total[2], total[3]


def test_worker_runs_tasks_keeps_serving_after_one_explodes_and_its_heartbeat_counts_them(
    e2e_app: App, start_worker: Callable[..., WorkerProcess], records: Path, pool: str
) -> None:
    # Given a worker with two slots
    worker = start_worker(*pool_args(pool, 2))
    # When a task raises, others follow it, one runs long enough to report its start and end, and one more fails
    bad = enqueue(e2e_app, "boom", "b1")
    goods = [enqueue(e2e_app, "record", f"g{i}") for i in range(20)]
    slow = enqueue(e2e_app, "record", "slow", 1.0)
    also_bad = enqueue(e2e_app, "boom", "b2")
    # Then the failure is recorded with its traceback and the others all succeed
    with pytest.raises(TaskFailed, match="RuntimeError: boom b1") as info:
        bad.get(timeout=15)
    assert "raise RuntimeError" in info.value.traceback
    assert [g.get(timeout=15) for g in goods] == [f"g{i}" for i in range(20)]
    assert slow.get(timeout=15) == "slow"
    with pytest.raises(TaskFailed):
        also_bad.get(timeout=15)
    assert "succeeded" in worker.output()  # one INFO line per task

    # And its heartbeat in the broker counts all 23 as processed and the 2 as failed (the children
    # send counts in bulk and typed start/finish events; the supervisor adds them up)
    def counted() -> tuple[int, int]:
        [info] = e2e_app.broker.workers()
        return info.processed, info.failed

    wait_until(lambda: counted() == (23, 2), 15, f"the heartbeat to count 23 processed, 2 failed: {counted()}")
    assert worker.stop() == 0


def test_kill_9_of_a_child_mid_task_loses_nothing(
    e2e_app: App, start_worker: Callable[..., WorkerProcess], records: Path, pool: str
) -> None:
    # Given a task that is running in a worker child
    worker = start_worker(*pool_args(pool, 2))
    result = enqueue(e2e_app, "record", "victim", 1.5)
    wait_until(lambda: runs_of(records, "victim") == 1, 15, "the task to start")
    child_pid = int((records / "victim.runs").read_text().split()[0])
    # When that child is killed with SIGKILL
    os.kill(child_pid, signal.SIGKILL)
    # Then the task goes back to the queue at once, runs again in a new child and succeeds
    assert result.get(timeout=15) == "victim"
    assert runs_of(records, "victim") == 2
    pids = (records / "victim.runs").read_text().split()
    assert pids[0] != pids[1]
    assert "died with signal 9" in worker.output()
    # And the worker keeps serving
    assert enqueue(e2e_app, "record", "after").get(timeout=15) == "after"
    assert worker.stop() == 0


def test_kill_9_of_the_whole_worker_redelivers_after_the_lease(
    e2e_app: App, start_worker: Callable[..., WorkerProcess], records: Path, pool: str
) -> None:
    # Given a worker running a task (lease 2 s)
    first = start_worker(*pool_args(pool, 1))
    result = enqueue(e2e_app, "record", "orphan", 1.0)
    wait_until(lambda: runs_of(records, "orphan") == 1, 15, "the task to start")
    # When the whole worker (supervisor) is killed with SIGKILL, its child dies with it
    first.proc.kill()
    first.proc.wait(timeout=10)
    # Then a new worker runs the task again once the lease expires
    start_worker(*pool_args(pool, 1))
    assert result.get(timeout=20) == "orphan"
    assert runs_of(records, "orphan") == 2


def test_graceful_stop_finishes_running_tasks_and_loses_nothing(
    e2e_app: App, start_worker: Callable[..., WorkerProcess], records: Path, pool: str
) -> None:
    # Given 30 tasks of 0.2 s each and a worker with two processes
    results = [enqueue(e2e_app, "record", f"t{i}", 0.2) for i in range(30)]
    worker = start_worker(*pool_args(pool, 2))
    wait_until(lambda: sum(runs_of(records, f"t{i}") for i in range(30)) >= 4, 15, "some tasks to run")
    # When it gets SIGTERM
    assert worker.stop() == 0
    # Then nothing is left in flight: every task either finished or waits in the queue
    ready, _scheduled, in_flight, dead = depth(e2e_app)
    done = sum(1 for r in results if r.state is State.SUCCESS)
    assert in_flight == 0 and dead == 0
    assert done + ready == 30
    assert "stopping gracefully" in worker.output()
    # And a new worker runs the rest, each task exactly once
    start_worker(*pool_args(pool, 2))
    assert all(r.get(timeout=30) for r in results)
    assert [runs_of(records, f"t{i}") for i in range(30)] == [1] * 30


def test_an_idle_worker_stops_at_once_not_when_its_reserve_wait_ends(
    e2e_app: App, start_worker: Callable[..., WorkerProcess], pool: str
) -> None:
    # Given an idle worker whose children (4 on the process pool) sit in their 1 s blocking reserve,
    # each at its own point of it
    worker = start_worker(*pool_args(pool, 4))
    time.sleep(0.3)
    # When it gets SIGTERM
    assert worker.stop() == 0
    exited = time.time()
    # Then it stops well before its children would notice the stop at the end of their waits (RESERVE_WAIT,
    # 1 s; a stop that waited them out took 0.9-2.0 s here, under load): the stop cuts the waits short
    # (0.07-0.23 s under load). Timed by the worker's own log, from its handling of the signal to its last
    # line: the test's wall clock adds what a loaded machine takes to deliver the signal and reap the process.
    # The bound stretches with the load (0.94 s once with four other processes busy on the two cores): on an
    # idle machine it stays below the 1 s a stop that waited out the children would take.
    output = worker.output()
    stopped = logged_at(output, "stopped: 0 task(s) processed")
    took = stopped - logged_at(output, "stopping gracefully")
    assert took < 0.7 * load_factor(), f"the stop took {took:.2f} s (load factor {load_factor():.1f}):\n{output}"
    # And the process leaves right after its last line, without the interpreter's teardown (which took
    # 0.2-0.8 s, and a log flusher's join 1.1 s): 0.5 s on an idle machine, more as the load delays the reaping
    left = exited - stopped
    assert left < 0.5 * load_factor(), f"the exit took {left:.2f} s after the last line:\n{output}"


def logged_at(output: str, text: str) -> float:
    """The time (seconds since the epoch) of the worker's log line containing ``text``."""
    for line in output.splitlines():
        if text in line:
            stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            return stamp.timestamp()
    raise AssertionError(f"no log line with {text!r}:\n{output}")


def test_bad_input_goes_to_dead_letters_and_the_worker_keeps_running(
    e2e_app: App, start_worker: Callable[..., WorkerProcess], records: Path, pool: str
) -> None:
    # Given a worker, and an undecodable message and a message for an unknown task
    worker = start_worker(*pool_args(pool, 1))
    e2e_app.broker.enqueue(
        [
            Envelope("garbage-1", "default", b"\x00\x01 not a message"),
            Envelope("unknown-1", "default", b'{"v":1,"id":"unknown-1","task":"no.such.task"}'),
        ]
    )
    # Then both end up dead-lettered with a reason
    wait_until(lambda: depth(e2e_app)[3] == 2, 15, "two dead letters")
    reasons = {d.id: d.reason for d in e2e_app.broker.dead_letters()}
    assert "undecodable" in reasons["garbage-1"]
    assert "'no.such.task' is not registered" in reasons["unknown-1"]
    # And the worker still serves
    assert enqueue(e2e_app, "record", "still-alive").get(timeout=15) == "still-alive"
    assert worker.stop() == 0


def test_hard_time_limit_replaces_the_child_and_the_worker_keeps_serving(
    e2e_app: App, start_worker: Callable[..., WorkerProcess], records: Path, pool: str
) -> None:
    # Given a task with a 1 s hard limit that sleeps for 60 s
    worker = start_worker(*pool_args(pool, 1))
    result = enqueue(e2e_app, "hang", "stuck")
    # Then it fails with TimeLimitExceeded, runs once only, and the worker serves the next task
    with pytest.raises(TimeLimitExceeded):
        result.get(timeout=15)
    assert runs_of(records, "stuck") == 1
    assert enqueue(e2e_app, "record", "next").get(timeout=15) == "next"
    assert "exceeded its hard time limit" in worker.output()
    assert worker.stop() == 0


def test_revoke_removes_a_queued_task_and_terminates_a_running_one(
    e2e_app: App, start_worker: Callable[..., WorkerProcess], records: Path, pool: str
) -> None:
    # Given a long task running on a one-slot worker, and a task queued behind it
    worker = start_worker(*pool_args(pool, 1))
    running = enqueue(e2e_app, "record", "running", 30)
    wait_until(lambda: runs_of(records, "running") == 1, 15, "the task to start")
    queued = enqueue(e2e_app, "record", "queued")
    # When the queued one is revoked, and the running one revoked with terminate=True
    assert queued.revoke() is True
    assert running.revoke(terminate=True) is False
    # Then the running one is stopped (its child replaced), the queued one never runs
    # (the supervisor kills a process or thread child for it; the asyncio pool cancels the one task)
    terminated = ("was revoked; terminating it", "was revoked and terminated")
    wait_until(lambda: any(t in worker.output() for t in terminated), 15, "the running task to be terminated")
    assert enqueue(e2e_app, "record", "next").get(timeout=15) == "next"
    assert (running.state, queued.state) == (State.REVOKED, State.REVOKED)
    assert runs_of(records, "queued") == 0 and runs_of(records, "running") == 1
    # (the result is written before the ack, so the last task may still be in flight for a moment)
    wait_until(lambda: depth(e2e_app) == (0, 0, 0, 0), 15, "nothing left in the broker")
    assert worker.stop() == 0
