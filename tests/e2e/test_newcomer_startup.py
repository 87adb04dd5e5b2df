"""A worker on a dead or unusable broker exits at start-up (issue 14, friction 3).

A Celery user started ``conveyor worker`` on ``redis://localhost:1/0`` and on a SQLite path that cannot
be opened: it said "ready" and retried forever, and Ctrl-C took 13 s. Now the worker checks its broker
and backend for at most ``startup_timeout`` seconds, prints one ``Error:`` line and exits 1 without
starting anything; Ctrl-C during the check stops it at once. (A broker that goes away after start-up is
still retried: tests/e2e/test_broker_stalls.py and the outage tests keep proving it.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import AMQP_URL, POSTGRES_URL, amqp_available, postgres_available, wait_until
from tests.e2e.conftest import ROOT
from tests.servers import free_port

APP = "tests.apps.newcomer_app:app"


def worker_env(tmp_path: Path, broker: str, **variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    backend = {"CONVEYOR_BACKEND_URL": f"sqlite:///{tmp_path / 'results.db'}"} if broker.startswith("amqp") else {}
    return {**env, "PYTHONPATH": str(ROOT), "CONVEYOR_BROKER_URL": broker, **backend, **variables}


def start(env: dict[str, str]) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "conveyor", "worker", APP, "-c", "1"]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def cases(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """Broker URL, and what its one error line must say, by case."""
    user, _, rest = AMQP_URL.removeprefix("amqp://").partition("@")
    return {
        "redis-nothing-listens": (f"redis://127.0.0.1:{free_port()}/0", "did not answer within 2 s at start-up"),
        "sqlite-cannot-open": (
            "sqlite:////proc/nope/c.db",
            "did not answer within 2 s at start-up: cannot open SQLite database /proc/nope/c.db",
        ),
        "amqp-wrong-port": (f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F", "did not answer within 2 s"),
        "amqp-wrong-password": (f"amqp://{user.partition(':')[0]}:wrong@{rest}/%2F", "did not answer within 2 s"),
        "postgres-nothing-listens": (
            f"postgresql://postgres:wrong@127.0.0.1:{free_port()}/db",
            "did not answer within 2 s at start-up: PostgreSQL postgresql://postgres:***@127.0.0.1:",
        ),
        "postgres-no-database": (
            f"{POSTGRES_URL}/conveyor_no_such_db",
            'database "conveyor_no_such_db" does not exist',
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "redis-nothing-listens",
        "sqlite-cannot-open",
        "amqp-wrong-port",
        "amqp-wrong-password",
        "postgres-nothing-listens",
        "postgres-no-database",
    ],
)
def test_a_worker_on_an_unusable_broker_exits_with_one_line(tmp_path: Path, case: str) -> None:
    if case.startswith("amqp"):
        amqp_available()  # the real RabbitMQ must run for the wrong-password case to mean anything
    if case == "postgres-no-database":
        postgres_available()  # the real server must answer "no such database" for the case to mean anything
    url, expected = cases(tmp_path)[case]
    began = time.monotonic()
    proc = start(worker_env(tmp_path, url, CONVEYOR_STARTUP_TIMEOUT="2"))
    out, err = proc.communicate(timeout=30)
    took = time.monotonic() - began
    assert proc.returncode == 1, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: broker "), err
    assert expected in lines[0]
    assert "wrong" not in lines[0]  # the password is masked
    assert "ready" not in out + err
    assert took < 15, f"took {took:.1f} s"  # startup_timeout 2 s plus an interpreter start on a loaded machine


def test_a_beat_on_a_dead_broker_exits_with_one_line_too(tmp_path: Path) -> None:
    env = worker_env(tmp_path, f"redis://127.0.0.1:{free_port()}/0", CONVEYOR_STARTUP_TIMEOUT="2")
    command = [sys.executable, "-m", "conveyor", "beat", APP]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("Error: broker redis://127.0.0.1:") and "did not answer within 2 s at start-up" in line


def test_ctrl_c_during_the_start_up_check_stops_at_once(tmp_path: Path) -> None:
    env = worker_env(tmp_path, f"redis://127.0.0.1:{free_port()}/0", CONVEYOR_STARTUP_TIMEOUT="60")
    proc = start({**env, "PYTHONFAULTHANDLER": "1"})  # SIGABRT dumps every thread's stack (see below)
    # Wait (bounded) until the check runs: its ping thread exists (on a loaded machine the imports take seconds).
    wait_until(lambda: proc.poll() is None and psutil.Process(proc.pid).num_threads() >= 2, 30, "the start-up check")
    stopped = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:  # say where it hangs, and leave no process behind for the next test
        status = psutil.Process(proc.pid).status()  # "stopped": something else SIGSTOPped it
        proc.send_signal(signal.SIGABRT)
        proc.send_signal(signal.SIGCONT)
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate(timeout=10)
        pytest.fail(f"the worker ({status}) did not stop within 10 s of Ctrl-C; its threads when aborted:\n{err}")
    assert time.monotonic() - stopped < 2.0
    assert proc.returncode == 1
    assert "Traceback" not in err and "ready" not in out + err
