"""Redis delivery holes (issue 11): a queue registry lost with a server restart (item 7).

A PRIVATE redis-server (own port, no persistence) is really restarted under a producer that stays
alive: the shared server on 6379 is never stopped.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import App
from tests.apps.e2e_app import runs_of
from tests.e2e.conftest import ROOT, WorkerProcess, enqueue, kill_leftovers, wait_until
from tests.servers import PrivateRedis
from tests.servers import private_redis as running_redis

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary")


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server of this test alone, without persistence: a restart loses every key."""
    with running_redis(tmp_path) as server:
        yield server


def test_revoke_and_stats_see_a_queue_after_the_server_lost_its_registry(
    private_redis: PrivateRedis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a long-lived producer that has enqueued to its queue once (so it knows the queue)
    records = tmp_path / "records"
    records.mkdir()
    url = f"{private_redis.url}?prefix=heal"
    env = dict(os.environ, CONVEYOR_BROKER_URL=url, CONVEYOR_LEASE="2", E2E_RECORD_DIR=str(records))
    env.update(PYTHONPATH=str(ROOT))
    env.pop("CONVEYOR_BACKEND_URL", None)
    for name in ("CONVEYOR_BROKER_URL", "E2E_RECORD_DIR"):
        monkeypatch.setenv(name, env[name])
    monkeypatch.delenv("CONVEYOR_BACKEND_URL", raising=False)
    app = App("e2e")
    workers: list[WorkerProcess] = []
    try:
        enqueue(app, "record", "before")
        # When the server restarts without persistence (the registry set is gone) and the producer,
        # still alive, enqueues a task and revokes it before any worker takes it
        private_redis.restart()  # same port, same folder: nothing was persisted
        doomed = enqueue(app, "record", "revoked")
        # Then stats lists the queue and revoke finds the queued task
        assert [s.queue for s in app.broker.stats()] == ["default"]
        assert doomed.revoke() is True
        # And a worker started afterwards never runs the revoked task
        enqueue(app, "record", "after")
        workers.append(WorkerProcess(env, ["--concurrency", "1"], tmp_path / "worker.log"))
        wait_until(lambda: runs_of(records, "after") == 1, 20, "the task sent after the revoke to run")
        assert runs_of(records, "revoked") == 0
    finally:
        app.close()
        kill_leftovers(workers)
