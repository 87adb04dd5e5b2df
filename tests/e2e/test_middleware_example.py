"""examples/middleware.py runs for real: a ``conveyor worker`` on SQLite with the DbSession middleware
(one transaction per task, a connection pool per child), and the same app through ``testing.drain``."""

from __future__ import annotations

import importlib
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from conveyor import State, TaskFailed
from conveyor.testing import drain
from tests.e2e.conftest import ROOT


@pytest.fixture
def example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The example module, imported fresh with its queue and orders database in tmp_path."""
    monkeypatch.setenv("CONVEYOR_BROKER_URL", f"sqlite:///{tmp_path / 'queue.db'}")
    monkeypatch.setenv("EXAMPLE_DB", str(tmp_path / "orders.db"))
    sys.modules.pop("examples.middleware", None)
    module = importlib.import_module("examples.middleware")
    yield module
    module.app.close()
    sys.modules.pop("examples.middleware", None)


def rows(tmp_path: Path) -> list[tuple[str, int]]:
    with sqlite3.connect(tmp_path / "orders.db") as conn:
        return sorted(conn.execute("SELECT sku, qty FROM orders").fetchall())


def test_the_example_commits_successes_and_rolls_back_failures_under_a_real_worker(
    example: ModuleType, tmp_path: Path
) -> None:
    # Given a worker with two process slots running the example app on SQLite
    log = tmp_path / "worker.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "conveyor", "worker", "examples.middleware:app", "-c", "2"]
    with log.open("w") as out:
        worker = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        # When three orders succeed and one fails on both of its attempts
        placed = [example.place_order.delay(sku, qty) for sku, qty in [("a", 1), ("b", 2), ("c", 3)]]
        failing = example.place_then_fail.delay("x")
        ids = sorted(r.get(timeout=30) for r in placed)
        with pytest.raises(TaskFailed, match="payment declined"):
            failing.get(timeout=30)
        # And a read-only task counts them
        counted = example.count_orders.delay().get(timeout=30)
    finally:
        worker.terminate()
        worker.wait(timeout=30)

    # Then only the successful orders are in the database: the failed attempts and the
    # read-only task's insert were rolled back by the middleware
    assert len(set(ids)) == 3
    assert counted == 3
    assert rows(tmp_path) == [("a", 1), ("b", 2), ("c", 3)]
    assert failing.state is State.FAILURE
    # And the worker hit no database error (a connection shared across fork() or threads would)
    assert "sqlite3." not in log.read_text(), log.read_text()


def test_the_example_runs_through_drain_with_the_same_hooks(example: ModuleType, tmp_path: Path) -> None:
    # Given the example app, drained in this process (on_child_start creates the table)
    example.place_order.delay("a", 1)
    failing = example.place_then_fail.delay("x")
    # When every task ran
    drain(example.app, timeout=20)
    counted = example.count_orders.delay()
    drain(example.app, timeout=20)
    # Then the same commits and rollbacks happened, and after_settle saw every ending
    assert counted.get(timeout=1) == 1
    assert rows(tmp_path) == [("a", 1)]
    assert failing.state is State.FAILURE
    [session] = example.app.middleware
    assert dict(session.ended) == {"SUCCESS": 2, "RETRY": 1, "FAILURE": 1}
