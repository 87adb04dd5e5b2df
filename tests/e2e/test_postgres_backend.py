"""The PostgreSQL result backend beside another broker: RabbitMQ carries the tasks, PostgreSQL keeps the results."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conveyor import App, State
from tests.conftest import amqp_url, postgres_schema_url
from tests.e2e.conftest import ROOT, WorkerProcess, enqueue, kill_leftovers


def test_rabbitmq_broker_with_postgres_results(
    amqp_vhost: str, postgres_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a worker on RabbitMQ whose results (and claims, worker registry) live in PostgreSQL
    records = tmp_path / "records"
    records.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.update(
        CONVEYOR_BROKER_URL=amqp_url(amqp_vhost),
        CONVEYOR_BACKEND_URL=postgres_schema_url(postgres_db),
        CONVEYOR_LEASE="2",
        E2E_RECORD_DIR=str(records),
        PYTHONPATH=str(ROOT),
    )
    for key, value in env.items():
        if key.startswith("CONVEYOR_") or key == "E2E_RECORD_DIR":
            monkeypatch.setenv(key, value)
    worker = WorkerProcess(env, ["-c", "2"], tmp_path / "worker.log")
    app = App("e2e")
    try:
        worker.wait_for_log("ready")
        # When tasks run, one of them failing for good
        goods = [enqueue(app, "record", f"g{i}") for i in range(10)]
        bad = enqueue(app, "doomed", "d")
        # (the keyed task runs 3 s: key= folds a send while its task waits or runs, and a worker woken
        # at once by RabbitMQ's push could finish a no-op between the two sends)
        keyed = [enqueue(app, "record", "k", 3.0, key="same") for _ in range(2)]
        # Then every result is in PostgreSQL, the failure with its traceback
        assert [r.get(timeout=20) for r in goods] == [f"g{i}" for i in range(10)]
        assert keyed[0].id == keyed[1].id  # key= folded through the PostgreSQL store's claims
        assert keyed[0].get(timeout=20) == "k"
        bad.get(timeout=20, propagate=False)
        assert bad.state is State.FAILURE
        assert "doomed d" in (bad.traceback or "")
        assert [w.pool for w in app.broker.workers()] == ["process"]  # the registry lives in the store
    finally:
        worker.stop()
        kill_leftovers([worker])
        app.close()
