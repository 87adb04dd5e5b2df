"""Redis delivery holes (issue 11): a queue registry lost with a server restart (item 7).

A PRIVATE redis-server (own port, no persistence) is really restarted under a producer that stays
alive: the shared server on 6379 is never stopped.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from conveyor import App
from tests.apps.e2e_app import runs_of
from tests.e2e.conftest import ROOT, WorkerProcess, enqueue, kill_leftovers, wait_until

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary")


class PrivateRedis:
    """A redis-server of this test alone, without persistence: a restart loses every key."""

    def __init__(self, folder: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port: int = sock.getsockname()[1]
        self.folder = folder
        self.proc = self._start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _start(self) -> subprocess.Popen[bytes]:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder)]
        command += ["--save", "", "--appendonly", "no"]
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        try:
            wait_until(up, 5, "the private redis-server to answer")
        finally:
            client.close()
        return proc

    def restart(self) -> None:
        """Kill the server and start an empty one on the same port (no persistence: everything is gone)."""
        self.stop()
        self.proc = self._start()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=5)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    yield server
    server.stop()


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
        private_redis.restart()
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
