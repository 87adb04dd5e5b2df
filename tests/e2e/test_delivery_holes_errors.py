"""Delivery holes of issue 11 that end in a wrong or stuck result: a leaked SQLite lock, an unprintable error.

Each test runs a real worker process (``conveyor worker``) on the e2e brokers it applies to.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conveyor import App, State, TaskFailed
from tests.apps.e2e_app import runs_of
from tests.e2e.conftest import WorkerProcess, enqueue, wait_until
from tests.e2e.test_worker import depth
from tests.engines.sqlite.test_sqlite_transactions import another_process_can_write

#: Seconds the test holds the SQLite write lock while the task's soft limit (0.5 s) fires.
HOLD = 1.5


def sqlite_file(env: dict[str, str]) -> Path:
    """The SQLite file the task writes to: the broker's, or RabbitMQ's result backend."""
    url = env.get("CONVEYOR_BACKEND_URL") or env["CONVEYOR_BROKER_URL"]
    if not url.startswith("sqlite:"):
        pytest.skip("no SQLite file in this setup (the write lock is SQLite's)")
    return Path(url.removeprefix("sqlite:///"))


def test_a_soft_time_limit_while_waiting_for_the_sqlite_lock_leaks_no_lock(
    e2e_env: dict[str, str],
    e2e_app: App,
    start_worker: Callable[..., WorkerProcess],
    records: Path,
    pool: str,
) -> None:
    # Given a worker running a fan-out task (soft_time_limit=0.5) that writes every 10 ms
    path = sqlite_file(e2e_env)
    start_worker("-c", "1", "--pool", pool)
    fanned = enqueue(e2e_app, "fan_out", "fan")
    wait_until(lambda: runs_of(records, "fan") == 1, 15, "the fan-out task to start")
    # When another process holds the write lock past the task's soft limit, so that it fires mid-wait
    holder = sqlite3.connect(path, isolation_level=None, timeout=10)
    try:
        holder.execute("BEGIN IMMEDIATE")
        time.sleep(HOLD)
        holder.execute("COMMIT")
    finally:
        holder.close()
    # Then the task ends as FAILURE (TimeLimitExceeded), the lock is free, and a later task completes
    wait_until(lambda: fanned.state is State.FAILURE, 10, "the fan-out task to fail on its soft limit")
    error = fanned.info
    assert error is not None and error.error is not None and error.error.type == "TimeLimitExceeded"
    assert another_process_can_write(path) == "free"
    started = time.monotonic()
    assert enqueue(e2e_app, "record", "later").get(timeout=10) == "later"
    assert time.monotonic() - started < 5


def test_an_exception_whose_str_raises_fails_the_task_once(
    e2e_app: App, start_worker: Callable[..., WorkerProcess], records: Path, pool: str
) -> None:
    # Given a worker, and a task (retries=0) that raises an exception whose __str__ and __repr__ raise
    start_worker("-c", "1", "--pool", pool)
    result = enqueue(e2e_app, "unprintable", "unprintable")
    # When it runs, then the caller gets TaskFailed promptly, with a stand-in for the message
    started = time.monotonic()
    with pytest.raises(TaskFailed) as failed:
        result.get(timeout=10)
    assert time.monotonic() - started < 5
    fallback = "<unprintable Unprintable: __str__ raised RuntimeError>"
    assert failed.value.remote_message == fallback
    assert failed.value.type_name == "tests.apps.e2e_app.Unprintable"
    # And it is recorded FAILURE, ran once, is acknowledged and not dead-lettered
    assert result.state is State.FAILURE
    wait_until(lambda: depth(e2e_app) == (0, 0, 0, 0), 5, "the message to be acknowledged")
    assert runs_of(records, "unprintable") == 1
