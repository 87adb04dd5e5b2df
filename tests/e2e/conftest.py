"""A real worker process (``python -m conveyor worker``) per test, on SQLite, Redis, RabbitMQ or PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from conveyor import App, AsyncResult, testing
from tests.conftest import wait_until

__all__ = ["POOLS_UNDER_TEST", "ROOT", "WorkerProcess", "enqueue", "kill_leftovers", "pool_args", "wait_until"]

ROOT = Path(__file__).resolve().parents[2]

#: The pools that every test taking the ``pool`` fixture runs on (conveyor.worker.pools.POOLS).
#: A new pool joins here, and the failure-handling tests then run on it unchanged.
POOLS_UNDER_TEST = ("process", "thread", "asyncio")
#: The broker a test runs the one-child pools (thread, asyncio) on when it runs on several brokers:
#: the process pool meets every broker, the other pools meet one, since a pool's code is the same on
#: every broker and the whole matrix nearly doubles the suite. ``E2E_EVERY_POOL=1`` runs
#: every pool on every broker (as the pools' own tests, tests/e2e/test_*_pool.py, always do).
ONE_CHILD_POOLS_ON = "redis"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep the one-child pools' runs of broker-parametrized tests to ONE_CHILD_POOLS_ON (see above)."""
    if os.environ.get("E2E_EVERY_POOL") == "1":
        return
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        pool, broker = params.get("pool"), params.get("e2e_env")
        skip = isinstance(pool, str) and pool != "process" and isinstance(broker, str) and broker != ONE_CHILD_POOLS_ON
        (dropped if skip else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pool_args(pool: str, slots: int) -> tuple[str, ...]:
    """The worker options for ``slots`` slots on ``pool`` (process: a child each; thread: threads of one child)."""
    return ("--pool", pool, "-c", str(slots))


@pytest.fixture(params=POOLS_UNDER_TEST)
def pool(request: pytest.FixtureRequest) -> str:
    """Each pool in turn: a test taking it runs once per pool."""
    param: str = request.param
    return param


class WorkerProcess(testing.WorkerProcess):
    """One ``conveyor worker`` subprocess of ``tests.apps.e2e_app:app``, with a helper to wait on its log."""

    def __init__(self, env: dict[str, str], args: list[str], log: Path) -> None:
        command = [sys.executable, "-m", "conveyor", "worker", "tests.apps.e2e_app:app", *args]
        with log.open("w") as out:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        super().__init__(proc, log)

    def wait_for_log(self, text: str, timeout: float = 40) -> None:
        # 40 s: a worker's start-up ("ready") took 7-15 s on the loaded CI machine (load 15-25)
        wait_until(lambda: text in self.output(), timeout, f"worker log to contain {text!r}:\n{self.output()}")


def worker_env(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, str]:
    """Environment for a worker and for the test's app on broker ``kind``: broker URL (and backend), record
    dir, short lease. The e2e fixture below and other tiers' ``e2e_env`` (tests/engines/redis_ha) build on it."""
    from tests.conftest import backend_url_for, url_for

    records = tmp_path / "records"
    records.mkdir()
    env = dict(os.environ)
    env.update(
        CONVEYOR_BROKER_URL=url_for(kind, tmp_path, request),
        CONVEYOR_LEASE="2",
        CONVEYOR_SHUTDOWN_GRACE="10",
        E2E_RECORD_DIR=str(records),
        PYTHONPATH=str(ROOT),
    )
    env.pop("CONVEYOR_BACKEND_URL", None)
    if kind.startswith("amqp"):  # RabbitMQ is no result store (amqp-quorum: its quorum queues)
        env["CONVEYOR_BACKEND_URL"] = backend_url_for(kind, tmp_path, request)
    return env


@pytest.fixture(params=["sqlite", "redis", "amqp", "postgres"])
def e2e_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment for a worker and for this test's app (:func:`worker_env`), one broker kind per run."""
    yield worker_env(request.param, tmp_path, request)


@pytest.fixture
def e2e_app(e2e_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[App]:
    """The test side's app, on the same broker as the worker."""
    for key in (
        "CONVEYOR_BROKER_URL",
        "CONVEYOR_BACKEND_URL",
        "CONVEYOR_LEASE",
        "CONVEYOR_SHUTDOWN_GRACE",
        "E2E_RECORD_DIR",
    ):
        if key in e2e_env:
            monkeypatch.setenv(key, e2e_env[key])
        else:
            monkeypatch.delenv(key, raising=False)
    app = App("e2e")
    yield app
    app.close()


def enqueue(app: App, task: str, *args: Any, **options: Any) -> AsyncResult[Any]:
    """Send one of the e2e tasks (by name) through the test's app."""
    from tests.apps import e2e_app

    message = e2e_app.app.tasks[task].message(args, **options)
    [task_id] = app.send([message])
    return app.result(task_id)


@pytest.fixture
def start_worker(e2e_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start workers; every one still running at the end is stopped (hard if it must)."""
    started: list[WorkerProcess] = []

    def start(*args: str) -> WorkerProcess:
        worker = WorkerProcess(e2e_env, list(args), tmp_path / f"worker-{len(started)}.log")
        started.append(worker)
        worker.wait_for_log("ready")
        return worker

    yield start
    kill_leftovers(started)


def kill_leftovers(processes: Sequence[WorkerProcess]) -> None:
    """Kill (-9) the processes a test left running, so none outlives it."""
    for process in processes:
        if process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait(timeout=10)


@pytest.fixture
def records(e2e_env: dict[str, str]) -> Path:
    return Path(e2e_env["E2E_RECORD_DIR"])
