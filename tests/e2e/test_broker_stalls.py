"""A broker that stalls for longer than the lease never hands a live worker's task to another (issue 11).

Two real workers (process pool, or thread pool) share a broker: one runs a task that sleeps 5 s,
the other is idle. Mid-task the broker stops answering for ``lease + 1.5`` seconds: a PRIVATE
redis-server is SIGSTOPped (the shared server on 6379 is never touched), or the SQLite file's write
lock is held by the test. Nobody can heartbeat meanwhile, and the lease deadline passes on the
broker's clock; the task must still run exactly once, and no worker may log that a lease was lost.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import App
from tests.apps.e2e_app import runs_of
from tests.e2e.conftest import ROOT, WorkerProcess, enqueue, kill_leftovers, wait_until
from tests.servers import PrivateRedis, private_redis

LEASE = 2.0
#: Longer than the lease by more than STALL_GAP's margin: the lease deadline passes during the stall.
STALL = LEASE + 1.5
TASK_SECONDS = 5.0


@contextlib.contextmanager
def stalled_redis(server: PrivateRedis) -> Iterator[None]:
    """SIGSTOP the private redis-server; SIGCONT it on the way out, whatever happens."""
    server.freeze()
    try:
        yield
    finally:
        server.thaw()


@contextlib.contextmanager
def stalled_sqlite(path: Path) -> Iterator[None]:
    """Hold the SQLite file's write lock (BEGIN IMMEDIATE), as a stuck writer would."""
    conn = sqlite3.connect(path, timeout=10, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


@pytest.fixture(params=["redis", "sqlite"])
def stallable(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Callable[[], Any]]]:
    """(broker URL, a context manager factory that stalls that broker)."""
    if request.param == "redis":
        if shutil.which("redis-server") is None:
            pytest.skip("needs the redis-server binary")
        with private_redis(tmp_path) as server:
            yield f"{server.url}?prefix=stall", lambda: stalled_redis(server)
    else:
        path = tmp_path / "conveyor.db"
        yield f"sqlite:///{path}", lambda: stalled_sqlite(path)


def test_a_broker_stall_longer_than_the_lease_reruns_no_live_task(
    stallable: tuple[str, Callable[[], Any]], pool: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, stall = stallable
    records = tmp_path / "records"
    records.mkdir()
    env = dict(os.environ, CONVEYOR_BROKER_URL=url, CONVEYOR_LEASE=str(LEASE), E2E_RECORD_DIR=str(records))
    env.update(PYTHONPATH=str(ROOT), CONVEYOR_SHUTDOWN_GRACE="10")
    env.pop("CONVEYOR_BACKEND_URL", None)
    for name in ("CONVEYOR_BROKER_URL", "CONVEYOR_LEASE", "E2E_RECORD_DIR"):
        monkeypatch.setenv(name, env[name])
    monkeypatch.delenv("CONVEYOR_BACKEND_URL", raising=False)
    app = App("e2e")
    workers: list[WorkerProcess] = []
    try:
        # Given a busy worker running a 5 s task and an idle worker beside it
        for i in range(2):
            args = ["--concurrency", "1", "--pool", pool]
            workers.append(WorkerProcess(env, args, tmp_path / f"worker-{i}.log"))
        for worker in workers:
            worker.wait_for_log("ready")
        result = enqueue(app, "record", "long", TASK_SECONDS)
        wait_until(lambda: runs_of(records, "long") == 1, 15, "the long task to start")
        # When the broker stalls for longer than the lease, mid-task, then serves again
        with stall():
            time.sleep(STALL)
        # Then the task completes, having run exactly once, and no lease was lost
        assert result.get(timeout=20) == "long"
        logs = "\n".join(w.output() for w in workers)
        assert runs_of(records, "long") == 1, f"the task ran {runs_of(records, 'long')} times:\n{logs}"
        assert "was lost" not in logs, logs
    finally:
        app.close()
        for worker in workers:
            with contextlib.suppress(AssertionError):
                worker.stop(timeout=15)
        kill_leftovers(workers)
