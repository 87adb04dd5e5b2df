"""An idle worker on PostgreSQL sends only its heartbeat: counted in the statement log of a PRIVATE cluster.

The cluster logs every statement (``log_statement = all``). After a worker ran a task and settled, the
test reads what the server received over five seconds: only the supervisor's heartbeat may be there
(register the worker, recover expired leases, publish its worker-heartbeat event), every 2 s. Its
children wait on LISTEN and send nothing, not even a read of their queues' pause flags; a pause still
reaches them (the flag's writer wakes them) and a task enqueued meanwhile waits until the resume.
"""

from __future__ import annotations

import collections
import os
import re
import time
from pathlib import Path

import pytest

from conveyor import App, pausing
from conveyor.brokers.postgres.migrate import migrate
from tests.apps.e2e_app import runs_of
from tests.e2e.conftest import ROOT, WorkerProcess, kill_leftovers, pool_args
from tests.pg_server import private_postgres

#: The heartbeat's statements (as the log shows them): register_worker, recover, the heartbeat event.
HEARTBEAT = (
    'INSERT INTO "conveyor".workers ',
    'SELECT "conveyor".cv_recover(',
    'WITH added AS (INSERT INTO "conveyor".events ',
)
WINDOW = 5.0
_STATEMENT = re.compile(r"\] LOG:  (?:statement|execute [^:]*): (.*)")


def _statements(log: Path, start: int) -> list[str]:
    """Every statement the server logged after byte ``start`` of its log."""
    with log.open("rb") as f:
        f.seek(start)
        text = f.read().decode(errors="replace")
    return [m.group(1) for m in _STATEMENT.finditer(text)]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_an_idle_worker_sends_only_its_heartbeat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pool: str) -> None:
    with private_postgres({"log_statement": "all", "log_line_prefix": "%m [%p] "}) as server:
        # Given a worker of two slots that ran a task (its children's pools and listeners are open)
        migrate(server.url, "conveyor")
        records = tmp_path / "records"
        records.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        env.update(CONVEYOR_BROKER_URL=server.url, E2E_RECORD_DIR=str(records), PYTHONPATH=str(ROOT))
        monkeypatch.setenv("CONVEYOR_BROKER_URL", server.url)
        worker = WorkerProcess(env, list(pool_args(pool, 2)), tmp_path / "worker.log")
        app = App("e2e")
        record = app.task(name="record")(_record)
        try:
            worker.wait_for_log("ready")
            assert record.delay("first").get(timeout=20) == "first"
            time.sleep(3.0)  # its lease's heartbeat and the task's events are over
            # When nothing is enqueued for five seconds
            start = server.log.stat().st_size
            time.sleep(WINDOW)
            seen = _statements(server.log, start)
            # Then the server received the heartbeat and nothing else
            others = [s for s in seen if not s.startswith(HEARTBEAT)]
            assert others == [], f"an idle {pool} worker sent more than its heartbeat:\n" + "\n".join(others)
            kinds = collections.Counter(next(h for h in HEARTBEAT if s.startswith(h)) for s in seen)
            assert 2 <= kinds[HEARTBEAT[0]] <= 4 and 2 <= kinds[HEARTBEAT[1]] <= 4, kinds  # every 2 s

            # And a queue paused while its children sit idle is left alone until it is resumed
            pausing.pause(app.backend, "default")
            time.sleep(1.5)  # the children were woken and read the flag
            held = record.delay("held")
            time.sleep(2.0)
            assert runs_of(records, "held") == 0, f"the idle {pool} worker took a task from a paused queue"
            pausing.resume(app.backend, "default")
            assert held.get(timeout=15) == "held"
        finally:
            worker.stop()
            kill_leftovers([worker])
            app.close()


def _record(tag: str, sleep: float = 0.0) -> str:
    """The signature of e2e_app's ``record`` task, registered on the producer's app (run by the worker only)."""
    return tag
