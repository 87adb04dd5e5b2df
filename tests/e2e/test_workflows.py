"""Workflows and flow control on real worker processes: a chord through a kill -9, rate limits and
per-key concurrency across two workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conveyor import App, chord
from tests.apps import workflows_app
from tests.e2e.conftest import ROOT, wait_until


class Worker:
    """``conveyor worker tests.apps.workflows_app:app`` in a session of its own, so kill -9 takes its whole tree."""

    def __init__(self, env: dict[str, str], log: Path, *args: str) -> None:
        self.log = log
        command = [sys.executable, "-m", "conveyor", "worker", "tests.apps.workflows_app:app", *args]
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_until(lambda: "ready" in log.read_text(), 20, f"worker ready:\n{log.read_text()}")

    def kill9(self) -> None:
        """kill -9 the supervisor and every child at once."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill9()


@pytest.fixture
def start(e2e_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def run(*args: str) -> Worker:
        worker = Worker(e2e_env, tmp_path / f"worker-{len(started)}.log", *args)
        started.append(worker)
        return worker

    yield run
    for worker in started:
        if worker.proc.poll() is None:
            worker.kill9()


def lines(records: Path, name: str) -> list[str]:
    path = records / name
    return path.read_text().splitlines() if path.exists() else []


def test_a_chord_through_a_kill_9_runs_its_body_once_with_every_result(
    e2e_app: App, records: Path, start: Callable[..., Worker]
) -> None:
    members = 8
    # Given a chord of 8 members of 0.4 s each, and a worker of 2 children running them
    result = chord(
        [workflows_app.member.s(i, 0.4) for i in range(members)], workflows_app.gather.s()
    ).apply_async(app=e2e_app)
    first = start("-c", "2")
    # When the whole worker is killed -9 while members run (some finished, some half-way)
    wait_until(lambda: len(lines(records, "member-2.starts")) >= 1, 30, "member 2 to start")
    first.kill9()
    assert not lines(records, "body.runs")
    # And another worker takes over once the dead worker's leases lapse
    second = start("-c", "2")
    # Then the body ran exactly once, with every member's result in order
    assert result.get(timeout=60) == [i * i for i in range(members)]
    time.sleep(0.5)  # a duplicate body would run within this (nothing is left to wait for)
    assert len(lines(records, "body.runs")) == 1
    # And some member ran twice (the kill interrupted it), without counting twice
    assert any(len(lines(records, f"member-{i}.starts")) > 1 for i in range(members))
    second.stop()
