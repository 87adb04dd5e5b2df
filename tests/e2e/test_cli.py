"""The command line as a user runs it: enqueue, status, revoke, dlq, help and clear errors.

On Redis only: the commands call the broker and backend API, which tests/conformance holds on every
engine (dead letters, requeue, purge, cancel, the workers registry); what is left to prove here is
the command line itself, and a ``python -m conveyor`` start costs a second of CPU. RabbitMQ's
``status`` from another process is tests/e2e/test_amqp_worker.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from conveyor import App, State
from conveyor.brokers import Envelope
from tests.apps.e2e_app import runs_of
from tests.e2e.conftest import ROOT, WorkerProcess, enqueue, wait_until

APP = "tests.apps.e2e_app:app"

pytestmark = pytest.mark.parametrize("e2e_env", ["redis"], indirect=True)


def cli(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "conveyor", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    if check:
        assert result.returncode == 0, result.stderr + result.stdout
    return result


def test_enqueue_and_wait_prints_the_id_and_the_result(
    e2e_env: dict[str, str], start_worker: Callable[..., WorkerProcess], records: Path
) -> None:
    start_worker("-c", "1")
    out = cli(e2e_env, "enqueue", APP, "record", "--args", '["from-cli"]', "--wait", "15").stdout.splitlines()
    assert len(out[0]) == 32  # the task id
    assert json.loads(out[1]) == "from-cli"


def test_status_shows_queues_and_live_workers(
    e2e_env: dict[str, str], e2e_app: App, start_worker: Callable[..., WorkerProcess]
) -> None:
    e2e_app.broker.enqueue([Envelope("x1", "reports", b"{}")])
    worker = start_worker("-c", "1", "-Q", "default")
    status = json.loads(cli(e2e_env, "status", APP, "--json").stdout)
    assert {"queue": "reports", "ready": 1, "scheduled": 0, "in_flight": 0, "dead": 0} in status["queues"]
    [live] = status["workers"]
    assert (live["pid"], live["queues"], live["concurrency"]) == (worker.proc.pid, ["default"], 1)
    table = cli(e2e_env, "status", APP).stdout
    assert "reports" in table and "live workers: 1" in table


def test_dlq_list_show_requeue_purge(e2e_env: dict[str, str], e2e_app: App) -> None:
    e2e_app.broker.enqueue([Envelope("d1", "default", b"junk"), Envelope("d2", "default", b"junk2")])
    for delivery in e2e_app.broker.reserve(["default"], 2, owner="t", lease=5):
        e2e_app.broker.dead_letter(delivery, "undecodable message: test")
    assert "d1" in cli(e2e_env, "dlq", "list", APP).stdout
    assert "undecodable message: test" in cli(e2e_env, "dlq", "show", APP, "d1").stdout
    assert "requeued 1" in cli(e2e_env, "dlq", "requeue", APP, "d1").stdout
    assert "deleted 1" in cli(e2e_env, "dlq", "purge", APP, "--yes").stdout
    assert [s.ready for s in e2e_app.broker.stats()] == [1]


def test_clear_errors_for_bad_input(e2e_env: dict[str, str]) -> None:
    bad_module = cli(e2e_env, "status", "no_such_module:app", check=False)
    assert bad_module.returncode == 2 and "cannot import module 'no_such_module'" in bad_module.stderr
    unknown_task = cli(e2e_env, "enqueue", APP, "nope", check=False)
    assert unknown_task.returncode == 2 and "no task 'nope'" in unknown_task.stderr
    bad_json = cli(e2e_env, "enqueue", APP, "record", "--args", "[1,", check=False)
    assert bad_json.returncode == 2 and "not valid JSON" in bad_json.stderr
    assert "Run a worker serving APP" in cli(e2e_env, "worker", "--help").stdout


def test_revoke_from_the_command_line_removes_a_queued_task_and_terminates_a_running_one(
    e2e_env: dict[str, str], e2e_app: App, start_worker: Callable[..., WorkerProcess], records: Path
) -> None:
    # Given a one-slot worker running a long task, and a task queued behind it
    worker = start_worker("-c", "1")
    running = enqueue(e2e_app, "record", "cli-running", 30)
    wait_until(lambda: runs_of(records, "cli-running") == 1, 15, "the task to start")
    queued = enqueue(e2e_app, "record", "cli-queued")
    # When both are revoked with `conveyor revoke`, the running one with --terminate
    assert f"{queued.id}: revoked (removed from its queue)" in cli(e2e_env, "revoke", APP, queued.id).stdout
    out = cli(e2e_env, "revoke", APP, running.id, "--terminate").stdout
    assert f"{running.id}: revoked (running: its worker process is being replaced)" in out
    # Then the running one is stopped, the queued one never runs, and both read REVOKED
    wait_until(lambda: "was revoked; terminating it" in worker.output(), 15, "the running task to be terminated")
    assert enqueue(e2e_app, "record", "cli-next").get(timeout=15) == "cli-next"
    assert (running.state, queued.state) == (State.REVOKED, State.REVOKED)
    assert runs_of(records, "cli-queued") == 0 and runs_of(records, "cli-running") == 1
    assert cli(e2e_env, "revoke", APP, check=False).returncode == 2  # an id is required


def test_dlq_show_prints_the_reason_and_each_attempts_traceback(
    e2e_env: dict[str, str], e2e_app: App, start_worker: Callable[..., WorkerProcess]
) -> None:
    # Given a task that failed for good into the dead-letter queue
    start_worker("-c", "1")
    result = enqueue(e2e_app, "doomed", "d")
    wait_until(lambda: len(e2e_app.broker.dead_letters()) == 1, 15, "the dead letter")
    # When `conveyor dlq show` looks at it
    out = cli(e2e_env, "dlq", "show", APP, result.id).stdout
    # Then it prints why it died and the failed attempt's traceback
    assert "failed after 1 attempt(s): RuntimeError: doomed d" in out
    assert "attempt 0: RuntimeError: doomed d" in out and 'raise RuntimeError(f"doomed {tag}")' in out
    missing = cli(e2e_env, "dlq", "show", APP, "no-such-id", check=False)
    assert missing.returncode == 1 and "no dead letter with id no-such-id" in missing.stderr
