"""The Django example project (examples/django, docs/django.md) against a real worker.

Django's database and conveyor's queue are SQLite files in this test's directory. The worker is
started the documented way (``conveyor worker mysite.conveyor_app:app``, with DJANGO_SETTINGS_MODULE
set by that module), finds ``orders.tasks`` by autodiscovery, and reads the order the producer
committed: ``delay_on_commit`` sends only after the commit, and nothing on a rollback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conveyor import App
from conveyor.testing import run_worker

pytest.importorskip("django")

PROJECT = Path(__file__).resolve().parents[2] / "examples" / "django"


def _manage(data: Path, *args: str) -> dict[str, Any]:
    env = {**os.environ, "EXAMPLE_DATA_DIR": str(data), "DJANGO_SETTINGS_MODULE": "mysite.settings"}
    env.pop("CONVEYOR_BROKER_URL", None)
    env.pop("CONVEYOR_BACKEND_URL", None)
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}


def test_a_django_view_sends_on_commit_and_a_real_worker_runs_the_discovered_task(tmp_path: Path) -> None:
    # Given the example's database migrated, and a worker on its queue
    _manage(tmp_path, "migrate", "--verbosity", "0")
    probe = App("probe", broker=f"sqlite:///{tmp_path / 'queue.db'}")  # the test's view of the same queue
    env = {"EXAMPLE_DATA_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "mysite.settings"}
    with run_worker(probe, "mysite.conveyor_app:app", "-c", "1", cwd=PROJECT, env=env) as worker:
        # When a transaction that creates an order sends its receipt task, then commits
        placed = _manage(tmp_path, "place_order", "12.50", "--wait", "20")
        # Then nothing was sent before the commit, the task ran after it and saw the committed row
        assert placed["queued_before_commit"] == 0
        assert placed["result"] == "12.50" and placed["receipt_sent"] is True
        # And a rolled-back transaction sends nothing
        rolled = _manage(tmp_path, "place_order", "3.00", "--rollback")
        assert rolled["rolled_back"] is True and rolled["queued_after_commit"] == 0
        assert probe.result(rolled["id"]).state == "PENDING"
    assert worker.proc.returncode == 0, worker.output()  # it stopped cleanly
    probe.close()


def test_the_example_projects_own_django_tests_pass_in_eager_mode(tmp_path: Path) -> None:
    # Django's test runner, a TestCase (one transaction per test), conveyor's eager mode inside it
    _manage(tmp_path, "test", "orders", "--verbosity", "0")
