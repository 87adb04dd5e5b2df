"""Prefetching: a process-pool child reserves a batch (the ``prefetch`` setting) and a thread-pool
child keeps a few tasks ready beyond its free slots, yet a long task never holds the short tasks
reserved behind it.

Each test runs on SQLite and on Redis (the e2e_env fixture), with a 2 s lease.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conveyor import App, State
from tests.apps.e2e_app import runs_of
from tests.e2e.conftest import WorkerProcess, enqueue, pool_args, wait_until
from tests.e2e.test_worker import depth


def test_a_long_task_gives_its_prefetched_batch_mates_to_the_other_child(
    e2e_app: App, start_worker: Callable[..., WorkerProcess], records: Path, pool: str
) -> None:
    # Given a long task queued first and 20 short ones behind it: the first child (process pool)
    # or thread (thread pool) to reserve takes the long one and some short ones in one batch
    long = enqueue(e2e_app, "record", "long", 8)
    shorts = [enqueue(e2e_app, "record", f"s{i}") for i in range(20)]
    # When a worker with two slots starts
    worker = start_worker(*pool_args(pool, 2))
    # Then every short task finishes while the long one still runs (the batch-mates went back to
    # the queue, or waited for the other slot, which ran them), each exactly once
    assert [s.get(timeout=6) for s in shorts] == [f"s{i}" for i in range(20)]
    assert long.state is State.STARTED
    assert [runs_of(records, f"s{i}") for i in range(20)] == [1] * 20
    # And the long task ends normally, with nothing left in flight
    assert long.get(timeout=15) == "long"
    wait_until(lambda: depth(e2e_app) == (0, 0, 0, 0), 15, "every task to be acknowledged")
    assert worker.stop() == 0


def test_a_task_given_back_and_taken_again_by_the_same_child_stays_leased_to_it(
    e2e_env: dict[str, str], e2e_app: App, start_worker: Callable[..., WorkerProcess], records: Path
) -> None:
    # Given a batch sent at once: a short task, a long one (three leases), and many short ones behind
    from tests.apps import e2e_app as tasks

    record = tasks.app.tasks["record"]
    fillers = [record.message((f"f{i}",)) for i in range(60)]
    first, long = record.message(("first",)), record.message(("long", 6.0))
    e2e_env["CONVEYOR_PREFETCH"] = "100"  # one child reserves the whole batch
    e2e_app.send([first, long, *fillers])
    # When one worker child reserves it all: the short task runs, its batch-mates go back to the
    # queue one by one, and the child, done with the short task, reserves them again meanwhile
    # (the same messages, new leases), the long one first
    worker = start_worker("-c", "1")
    wait_until(lambda: runs_of(records, "long") == 1, 10, "the long task to start")
    # And a second worker is there to take any message whose lease runs out
    start_worker("-c", "1")
    # Then the long task stays leased to the child running it (its heartbeat extends the new lease,
    # not the old one the child gave back): it runs once, however long it runs
    assert e2e_app.result(long.id).get(timeout=20) == "long"
    assert [e2e_app.result(m.id).get(timeout=20) for m in fillers] == [f"f{i}" for i in range(60)]
    time.sleep(1.0)  # a copy taken after a lost lease would have started by now (a lease is 2 s)
    assert runs_of(records, "long") == 1, "the long task ran twice on a live worker"
    assert [runs_of(records, f"f{i}") for i in range(60)] == [1] * 60
    wait_until(lambda: depth(e2e_app) == (0, 0, 0, 0), 15, "every task to be acknowledged")
    assert worker.stop() == 0


def _pin_to_cpu0_with_hogs(worker: WorkerProcess, hogs: int) -> list[subprocess.Popen[bytes]]:
    """Pin the worker's processes to CPU 0 and start ``hogs`` busy loops there: its child is preempted often."""
    pids = [worker.pid] + [
        int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _parent(p) == worker.pid
    ]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(pid, {0})
            os.setpriority(os.PRIO_PROCESS, pid, 5)
    started = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(hogs)]
    for hog in started:
        os.sched_setaffinity(hog.pid, {0})
    return started


def _parent(proc: Path) -> int:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_a_preempted_child_running_short_tasks_keeps_its_prefetched_batch(
    e2e_app: App, start_worker: Callable[..., WorkerProcess], records: Path
) -> None:
    # Given a process worker with one child, sharing one CPU with three busy loops: the scheduler takes the
    # CPU away from it for milliseconds at a time, also in the middle of a task
    from tests.apps import e2e_app as tasks

    worker = start_worker("--pool", "process", "-c", "1", "--loglevel", "DEBUG")
    hogs = _pin_to_cpu0_with_hogs(worker, 3)
    try:
        # When 1200 no-op tasks are queued at once
        mark = tasks.app.tasks["mark"]
        e2e_app.send([mark.message((i,)) for i in range(1200)])
        wait_until(lambda: len(tasks.marks(records)) >= 1200, 60, "every task to run")
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait(timeout=5)
    # Then each ran once, and the child kept its prefetched batches: a task that waited for the CPU has not
    # run long (a give-back costs a round trip per task, and the child reserves them again)
    assert sorted(tasks.marks(records)) == list(range(1200))
    gave_back = worker.output().count("unstarted task(s) to the queue")
    assert gave_back <= 3, f"the prefetched tasks went back to the queue {gave_back} times"
    wait_until(lambda: depth(e2e_app) == (0, 0, 0, 0), 15, "every task to be acknowledged")
    assert worker.stop() == 0
