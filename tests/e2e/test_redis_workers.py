"""Redis across processes: two workers split a batch, and a Redis restart while tasks flow."""

from __future__ import annotations

import collections
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conveyor import App
from tests.apps.e2e_app import marks
from tests.conftest import redis_available
from tests.e2e.conftest import WorkerProcess, wait_until
from tests.servers import PrivateRedis


def send_marks(app: App, n: int, sleep: float = 0.0) -> None:
    from tests.apps import e2e_app

    task = e2e_app.app.tasks["mark"]
    for start in range(0, n, 1000):
        app.send([task.message((i, sleep)) for i in range(start, min(n, start + 1000))])


@pytest.mark.slow
@pytest.mark.parametrize("e2e_env", ["redis"], indirect=True)
def test_two_workers_split_10000_tasks_none_lost_none_twice(
    e2e_app: App, start_worker: Callable[..., WorkerProcess], records: Path
) -> None:
    # Given two separate worker processes sharing one Redis (both started first: one worker alone
    # can drain 10,000 no-op tasks before a second one is up)
    a = start_worker("-c", "2")
    b = start_worker("-c", "2")
    # When 10,000 tasks arrive and they drain the queue
    send_marks(e2e_app, 10_000)
    wait_until(lambda: len(marks(records)) >= 10_000, 120, "10,000 executions")
    time.sleep(0.5)  # let a duplicate, if any, land
    # Then every task ran exactly once, and both workers took a share
    seen = collections.Counter(marks(records))
    assert len(seen) == 10_000 and set(seen.values()) == {1}
    pids = {p.name for p in records.glob("marks-*.txt")}
    assert len(pids) == 4  # two children in each worker all took work
    assert a.stop() == 0 and b.stop() == 0


@pytest.mark.slow
def test_redis_restart_while_tasks_flow_loses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    redis_available()
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH")
    from tests.e2e.conftest import ROOT, WorkerProcess

    server = PrivateRedis(tmp_path, durable=True, timeout=10)  # append-only, fsync always
    server.start()
    records = tmp_path / "records"
    records.mkdir()
    env = dict(
        os.environ,
        CONVEYOR_BROKER_URL=f"redis://127.0.0.1:{server.port}/0",
        CONVEYOR_LEASE="3",
        E2E_RECORD_DIR=str(records),
        PYTHONPATH=str(ROOT),
    )
    monkeypatch.setenv("CONVEYOR_BROKER_URL", env["CONVEYOR_BROKER_URL"])
    app = App("e2e")
    worker = WorkerProcess(env, ["-c", "2"], tmp_path / "worker.log")
    try:
        # Given 2,000 tasks of 1 ms flowing through a worker
        worker.wait_for_log("ready")
        send_marks(app, 2_000, sleep=0.001)
        wait_until(lambda: len(marks(records)) >= 300, 60, "300 executions")
        # When Redis is killed and restarted (append-only file, fsync always) mid-flow
        server.kill()
        time.sleep(0.5)
        server.start()
        # Then the worker reconnects by itself and every task still completes
        wait_until(lambda: len(set(marks(records))) >= 2_000, 90, "every task to run")
        seen = collections.Counter(marks(records))
        twice = sum(1 for count in seen.values() if count > 1)
        print(f"\nredis restart: 2000 tasks, all ran; {twice} ran twice (acknowledgement cut off by the restart)")
        assert set(seen) == set(range(2_000))
        assert twice <= 10  # only those in flight when Redis died
    finally:
        worker.stop()
        app.close()
        server.kill()
