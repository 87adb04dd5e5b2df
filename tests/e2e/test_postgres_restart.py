"""A PostgreSQL restart mid-load loses nothing that was committed (a PRIVATE cluster: never the system server).

A producer enqueues tasks one by one while a worker runs them; the cluster is stopped as a crash would
stop it (``pg_ctl stop -m immediate``: no checkpoint, WAL replay at start) and started again. Every
enqueue that returned is committed, so its task must run; an enqueue that failed with the server down
is retried with the same id, and DuplicateTaskId then proves it had committed before the failure.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from conveyor import App
from conveyor.brokers.postgres.migrate import migrate
from conveyor.errors import BrokerUnavailable, DuplicateTaskId
from tests.apps.e2e_app import runs_of
from tests.e2e.conftest import ROOT, WorkerProcess, kill_leftovers, wait_until
from tests.pg_server import private_postgres

TASKS = 400


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_a_restart_mid_load_loses_no_committed_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with private_postgres() as server:
        # Given a worker on a private cluster, and a producer enqueueing one task at a time
        migrate(server.url, "conveyor")
        records = tmp_path / "records"
        records.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        env.update(CONVEYOR_BROKER_URL=server.url, CONVEYOR_LEASE="2", E2E_RECORD_DIR=str(records))
        env["PYTHONPATH"] = str(ROOT)
        monkeypatch.setenv("CONVEYOR_BROKER_URL", server.url)
        worker = WorkerProcess(env, ["-c", "2"], tmp_path / "worker.log")
        app = App("e2e")
        record = app.task(name="record")(_record)
        committed: list[str] = []
        failures: list[BaseException] = []
        retries: list[str] = []

        def produce() -> None:
            for i in range(TASKS):
                tag = f"t{i}"
                deadline = time.monotonic() + 60
                while True:
                    try:
                        record.apply_async((tag,), task_id=tag)
                    except DuplicateTaskId:
                        pass  # an earlier try committed before the connection dropped
                    except BrokerUnavailable as exc:
                        if time.monotonic() > deadline:
                            failures.append(exc)
                            return
                        retries.append(tag)
                        time.sleep(0.05)  # the server is restarting: retry the same id
                        continue
                    committed.append(tag)
                    break
                time.sleep(0.002)

        try:
            worker.wait_for_log("ready")
            producer = threading.Thread(target=produce)
            producer.start()
            # When the cluster crashes and restarts mid-load
            wait_until(lambda: len(committed) >= TASKS // 3, 60, "a third of the tasks to be enqueued")
            server.crash()
            time.sleep(1.0)  # down for a second: producers and workers meet errors
            server.start()
            producer.join(timeout=90)
            assert not producer.is_alive() and failures == []
            # Then every committed task ran, and the worker still serves
            assert len(committed) == TASKS
            assert retries, "the restart never reached the producer"
            wait_until(
                lambda: all(runs_of(records, tag) >= 1 for tag in committed),
                60,
                f"every committed task to run:\n{worker.output()[-3000:]}",
            )
            assert record.apply_async(("after",)).get(timeout=20) == "after"
        finally:
            worker.stop()
            kill_leftovers([worker])
            app.close()


def _record(tag: str, sleep: float = 0.0) -> str:
    """The signature of e2e_app's ``record`` task, registered on the producer's app (run by the worker only)."""
    return tag
