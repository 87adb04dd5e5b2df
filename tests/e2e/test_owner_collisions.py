"""Lease owners of workers in separate PID namespaces on one host (issue 11, item 10).

Two workers each run under ``unshare --pid --fork``: both supervisors are pid 1 and their first
children have the same pid too, with the same hostname (compose replicas with a fixed hostname,
``--network host``, k8s ``hostNetwork``). Killing one worker's child must not hand the other
worker's running task to a third worker.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import App
from conveyor.states import State
from tests.apps.e2e_app import runs_of
from tests.e2e.conftest import ROOT, WorkerProcess, enqueue, kill_leftovers, wait_until

pytestmark = pytest.mark.skipif(
    shutil.which("unshare") is None or os.geteuid() != 0, reason="needs unshare and root for PID namespaces"
)


class NamespacedWorker(WorkerProcess):
    """A ``conveyor worker`` that is pid 1 of its own PID namespace (``unshare --pid --fork``)."""

    def __init__(self, env: dict[str, str], args: list[str], log: Path) -> None:
        self.log = log
        command = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]
        command += [sys.executable, "-m", "conveyor", "worker", "tests.apps.e2e_app:app", *args]
        with log.open("w") as out:
            self.proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)

    def child_pids(self) -> list[int]:
        """Host pids of the worker's children (unshare -> supervisor -> children)."""
        [supervisor] = _children(self.proc.pid)
        return _children(supervisor)


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


@pytest.fixture
def workers(e2e_env: dict[str, str], tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    kill_leftovers(started)


def test_a_dead_child_in_one_namespace_does_not_release_the_task_of_another(
    e2e_env: dict[str, str], e2e_app: App, records: Path, tmp_path: Path, workers: list[WorkerProcess], pool: str
) -> None:
    # Given worker B (own PID namespace) running a long task
    b = NamespacedWorker(e2e_env, ["--concurrency", "1", "--pool", pool], tmp_path / "b.log")
    workers.append(b)
    b.wait_for_log("ready")
    long = enqueue(e2e_app, "record", "long", 6.0)
    wait_until(lambda: runs_of(records, "long") == 1, 15, "the long task to start in worker B")
    # And worker A (another PID namespace, same hostname, so the same pids) and an idle worker C
    a = NamespacedWorker(e2e_env, ["--concurrency", "1", "--pool", pool], tmp_path / "a.log")
    workers.append(a)
    a.wait_for_log("ready")
    c = WorkerProcess(e2e_env, ["--concurrency", "1", "--pool", pool], tmp_path / "c.log")
    workers.append(c)
    c.wait_for_log("ready")
    # Then workers() lists the three workers separately
    wait_until(lambda: len(e2e_app.broker.workers()) == 3, 10, f"3 workers, not {e2e_app.broker.workers()}")
    # When A's child is killed -9 while B still runs the long task
    [child] = a.child_pids()
    os.kill(child, signal.SIGKILL)
    wait_until(lambda: len(a.child_pids()) == 1 and a.child_pids() != [child], 10, "worker A to replace its child")
    # Then the long task finishes in B, having run exactly once (never handed to A or C meanwhile)
    assert long.get(timeout=20) == "long"
    assert long.state is State.SUCCESS
    assert runs_of(records, "long") == 1, (a.output(), c.output())
