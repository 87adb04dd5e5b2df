"""Prefetching: a process-pool child reserves a batch (the ``prefetch`` setting) and a thread-pool
child keeps a few tasks ready beyond its free slots, yet a long task never holds the short tasks
reserved behind it.

Each test runs on SQLite and on Redis (the e2e_env fixture), with a 2 s lease.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

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
