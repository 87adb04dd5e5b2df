"""Delivery holes of the worker itself (issue 11): a poison task's batch-mates, a whole worker's
never-started batch-mates, a GIL-holding task's lease, and a result backend that goes down while the
broker stays up.

Each test starts real ``conveyor worker`` processes (tests/e2e/conftest.py) on the brokers the
scenario applies to.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from conveyor import App, State
from tests.apps.e2e_app import runs_of
from tests.e2e.conftest import WorkerProcess, enqueue, pool_args, wait_until
from tests.servers import PrivateRedis, private_redis

# -- item 9: a poison task takes only itself down ----------------------------------------------


@pytest.mark.parametrize("e2e_env", ["sqlite", "redis"], indirect=True)
def test_a_segfaulting_task_does_not_bury_its_never_started_batch_mates(
    e2e_env: dict[str, str], e2e_app: App, start_worker: Callable[..., WorkerProcess], records: Path
) -> None:
    # Given a task that segfaults its process, and five trivial tasks queued behind it (one prefetch
    # batch with the default prefetch and max_deliveries); a 30 s lease, so only the crash returns them
    e2e_env["CONVEYOR_LEASE"] = "30"
    poison = enqueue(e2e_app, "segfault", "poison")
    innocents = [enqueue(e2e_app, "record", f"innocent{i}") for i in range(5)]
    # When a one-process worker serves them: each delivery of the poison kills its child
    start_worker("-c", "1")
    wait_until(lambda: len(e2e_app.broker.dead_letters()) >= 1, 30, "the poison task to be dead-lettered")
    # Then the five innocent tasks run to SUCCESS, and only the poison is dead-lettered
    for i, result in enumerate(innocents):
        assert result.get(timeout=20) == f"innocent{i}"
    assert [d.id for d in e2e_app.broker.dead_letters()] == [poison.id]
    assert runs_of(records, "poison") == e2e_app.settings.max_deliveries
    assert [runs_of(records, f"innocent{i}") for i in range(5)] == [1] * 5
    assert all(r.state is State.SUCCESS for r in innocents)


# -- a whole worker killed: its never-started batch-mates are not counted --------------------------


def kill_whole_worker(worker: WorkerProcess) -> None:
    """kill -9 the supervisor and every child (as a lost machine would): nobody can say what was running."""
    children = psutil.Process(worker.proc.pid).children(recursive=True)
    os.kill(worker.proc.pid, signal.SIGKILL)
    for child in children:
        child.kill()
    worker.proc.wait(timeout=10)
    psutil.wait_procs(children, timeout=10)


@pytest.mark.parametrize("e2e_env", ["sqlite", "redis"], indirect=True)
def test_a_killed_whole_worker_does_not_bury_its_never_started_batch_mates(
    e2e_env: dict[str, str], e2e_app: App, start_worker: Callable[..., WorkerProcess], records: Path
) -> None:
    # Given max_deliveries=2, a 1 s lease, and a task that holds the GIL (its child can neither heartbeat
    # nor hand back its prefetched batch) ahead of three trivial tasks: one prefetch batch
    e2e_env["CONVEYOR_MAX_DELIVERIES"] = "2"
    e2e_env["CONVEYOR_LEASE"] = "1"
    e2e_app.broker.max_deliveries = 2  # the test side recovers the expired leases too
    hog = enqueue(e2e_app, "gil_hold", "hog", 60)
    innocents = [enqueue(e2e_app, "record", f"innocent{i}") for i in range(3)]
    # When a whole one-process worker is killed while it runs the hog, twice (max_deliveries)
    for kill in range(1, 3):
        worker = start_worker("-c", "1")
        wait_until(lambda k=kill: runs_of(records, "hog") == k, 15, "the hog to start")  # type: ignore[misc]
        kill_whole_worker(worker)
        # ... and their leases expire
        wait_until(lambda: e2e_app.broker.recover() >= 0 and in_flight(e2e_app) == 0, 10, "the leases to expire")
    # Then none of the batch-mates, which never started, is dead-lettered
    dead = {d.id for d in e2e_app.broker.dead_letters()}
    assert not dead & {r.id for r in innocents}, [d.reason for d in e2e_app.broker.dead_letters()]
    # And once the hog is gone, each runs once, to SUCCESS
    assert e2e_app.broker.cancel([hog.id]) == [hog.id] or hog.id in dead
    start_worker("-c", "1")
    for i, result in enumerate(innocents):
        assert result.get(timeout=20) == f"innocent{i}"
    assert [runs_of(records, f"innocent{i}") for i in range(3)] == [1, 1, 1]


def in_flight(app: App) -> int:
    return sum(s.in_flight for s in app.broker.stats())


# -- item 8: a task holding the GIL keeps its lease ---------------------------------------------


def test_a_task_holding_the_gil_longer_than_its_lease_runs_once(
    e2e_env: dict[str, str],
    e2e_app: App,
    start_worker: Callable[..., WorkerProcess],
    records: Path,
    pool: str,
) -> None:
    # Given two live workers with a 2 s lease (a process each, or two threads each)
    e2e_env["CONVEYOR_LEASE"] = "2"
    slots = 1 if pool == "process" else 2
    workers = [start_worker(*pool_args(pool, slots)), start_worker(*pool_args(pool, slots))]
    # When a task holds the GIL for 6 s (a C call that never releases it: its child's heartbeat thread starves)
    result = enqueue(e2e_app, "gil_sleep", "gil", 6)
    # Then it ends once, was never handed to the other worker, and no lease was lost
    assert result.get(timeout=30) == "gil"
    wait_until(lambda: all(w.proc.poll() is None for w in workers), 1, "the workers to be alive")
    for worker in workers:
        assert worker.stop() == 0
    assert runs_of(records, "gil") == 1, (records / "gil.runs").read_text()
    logs = "".join(w.output() for w in workers)
    assert "was lost" not in logs, logs


# -- item 3: the result backend goes down while the broker stays up ---------------------------


@pytest.fixture
def private_backend(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server of this test alone (own port, own directory, 10 s to answer): it may kill and restart it."""
    directory = tmp_path / "backend-redis"
    directory.mkdir()
    with private_redis(directory, timeout=10) as server:
        yield server


#: Lease, deliveries and outage: the outage lasts several times max_deliveries x (lease + retry_for).
OUTAGE_LEASE, OUTAGE_MAX_DELIVERIES, OUTAGE_SECONDS = 1, 3, 9.0


@pytest.mark.parametrize("e2e_env", ["sqlite", "redis", "amqp"], indirect=True)
# Both tracking modes on the process pool; on the one-child pools, each mode once (the modes are the executor's).
@pytest.mark.parametrize(
    ("pool", "track_started"),
    [("process", False), ("process", True), ("thread", True), ("asyncio", False)],
    ids=["process-untracked", "process-tracked", "thread-tracked", "asyncio-untracked"],
)
def test_a_result_backend_outage_buries_nothing_and_every_task_completes_once(
    e2e_env: dict[str, str],
    private_backend: PrivateRedis,
    start_worker: Callable[..., WorkerProcess],
    records: Path,
    monkeypatch: pytest.MonkeyPatch,
    pool: str,
    track_started: bool,
) -> None:
    # Given a worker whose result backend is a Redis of its own (the broker elsewhere), a 1 s lease
    # and max_deliveries 3
    e2e_env.update(
        CONVEYOR_BACKEND_URL=private_backend.url,
        CONVEYOR_LEASE=str(OUTAGE_LEASE),
        CONVEYOR_MAX_DELIVERIES=str(OUTAGE_MAX_DELIVERIES),
        CONVEYOR_TRACK_STARTED="1" if track_started else "0",
        E2E_BACKEND_RETRY_FOR="0.5",  # each backend call gives up after 0.5 s (default 5 s)
    )
    for key, value in e2e_env.items():
        if key.startswith("CONVEYOR_") or key == "E2E_RECORD_DIR":
            monkeypatch.setenv(key, value)
    app = App("e2e")
    worker = start_worker(*pool_args(pool, 2))
    # When the backend dies, tasks (sync and async) arrive, and the outage lasts 9 s
    private_backend.kill()
    tags = [f"t{i}" for i in range(6)]
    results = [enqueue(app, "record" if i % 2 else "async_record", tag) for i, tag in enumerate(tags)]
    time.sleep(OUTAGE_SECONDS)  # the scenario is the passing of time; what ran meanwhile is checked after
    ran_during_outage = [runs_of(records, tag) for tag in tags]
    # Then nothing was dead-lettered, no side effect ran twice (untracked: a task may run, its result waits)
    assert app.broker.dead_letters() == [], worker.output()
    assert max(ran_during_outage) <= 1, ran_during_outage
    if track_started:
        assert ran_during_outage == [0] * len(tags), "a tracked task ran although its STARTED could not be written"
    # When the backend comes back
    private_backend.start()
    # Then every task ends SUCCESS, each ran exactly once, and still nothing is dead
    for tag, result in zip(tags, results, strict=True):
        assert result.get(timeout=30) == tag
    assert [runs_of(records, tag) for tag in tags] == [1] * len(tags)
    assert app.broker.dead_letters() == []
    app.close()
