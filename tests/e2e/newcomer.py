"""Fixtures for the tests that redo a Celery user's first day (issue 14) against a real worker.

``shop`` re-imports ``tests.apps.newcomer_app`` (in place: ``importlib.reload``) with the test's
broker in the environment, as a user's producer imports its tasks module, so the tests call
``newcomer_app.charge.delay(...)`` as the user did; ``shop_worker`` runs ``conveyor worker`` on it.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import App
from tests.apps import newcomer_app
from tests.conftest import backend_url_for, url_for
from tests.e2e.conftest import ROOT, WorkerProcess, kill_leftovers

__all__ = ["ShopWorker", "cli", "shop", "shop_env", "shop_worker"]


class ShopWorker(WorkerProcess):
    """``conveyor worker tests.apps.newcomer_app:app`` logging to a file."""

    def __init__(self, env: dict[str, str], args: list[str], log: Path) -> None:  # its own app, not the e2e one
        self.log = log
        command = [sys.executable, "-m", "conveyor", "worker", "tests.apps.newcomer_app:app", *args]
        with log.open("w") as out:
            self.proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


@pytest.fixture(params=["sqlite", "redis"])
def shop_env(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The broker (and backend) of one test, set in this process's environment too."""
    values = {
        "CONVEYOR_BROKER_URL": url_for(request.param, tmp_path, request),
        "CONVEYOR_BACKEND_URL": backend_url_for(request.param, tmp_path, request),
        "CONVEYOR_LEASE": "5",
        "CONVEYOR_SHUTDOWN_GRACE": "5",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return {**os.environ, **values, "PYTHONPATH": str(ROOT)}


@pytest.fixture
def shop(shop_env: dict[str, str]) -> Iterator[App]:
    """``newcomer_app`` imported again with the test's broker; its app (closed at the end)."""
    importlib.reload(newcomer_app)
    newcomer_app.app.backend.get_value("warm-up")  # a fresh SQLite file is created here, before the worker opens it
    yield newcomer_app.app
    newcomer_app.app.close()


@pytest.fixture
def shop_worker(shop: App, shop_env: dict[str, str], tmp_path: Path) -> Iterator[ShopWorker]:
    """One running worker (one process slot) for the shop."""
    worker = ShopWorker(shop_env, ["-c", "1"], tmp_path / "worker.log")
    try:
        worker.wait_for_log("ready", timeout=30)
        yield worker
    finally:
        kill_leftovers([worker])


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m conveyor ARGS`` as a user would, with a wide terminal."""
    return subprocess.run(
        [sys.executable, "-m", "conveyor", *args],
        cwd=ROOT,
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
    )
