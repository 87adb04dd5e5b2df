"""A user's log lines in a real worker's output (docs/logging.md), on every pool.

Tasks in a user module (tests/apps/logging_app.py) log with ``logging.getLogger(__name__)``,
``get_task_logger`` and ``warnings.warn``; the worker's output must show each line with its time,
level, pid, and the task's name and id, and lose none when SIGTERM stops the worker right after.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import App
from tests.e2e.conftest import POOLS_UNDER_TEST, ROOT, wait_until

#: ``2026-11-30 20:41:22,123 LEVEL   [process-name pid] `` before every line of conveyor's format.
PREFIX = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) +\[(?P<process>[\w-]+) (?P<pid>\d+)\] "


class Worker:
    """``conveyor worker APP`` on a SQLite broker in ``tmp``, its output in a file."""

    def __init__(self, spec: str, tmp: Path, *args: str, ready: bool = True, **env: str) -> None:
        self.log = tmp / "worker.log"
        self.env = dict(os.environ, PYTHONPATH=str(ROOT), CONVEYOR_BROKER_URL=f"sqlite:///{tmp / 'queue.db'}", **env)
        self.env.pop("CONVEYOR_BACKEND_URL", None)
        command = [sys.executable, "-m", "conveyor", "worker", spec, *args]
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        if ready:  # its "ready" line is INFO: a worker at WARNING does not say it (the queue holds the tasks)
            try:
                wait_until(lambda: "ready" in self.output(), 20, f"the worker to be ready:\n{self.output()}")
            except AssertionError:
                self.kill()
                raise

    def output(self) -> str:
        return self.log.read_text()

    def stop(self) -> str:
        """SIGTERM, wait for the exit (status 0), and return everything the worker wrote."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the worker did not stop within 30 s of SIGTERM:\n{self.output()}") from None
        assert code == 0, self.output()
        return self.output()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[App]:
    """The test side of tests/apps/logging_app.py, on the worker's SQLite broker."""
    monkeypatch.setenv("CONVEYOR_BROKER_URL", f"sqlite:///{tmp_path / 'queue.db'}")
    monkeypatch.delenv("CONVEYOR_BACKEND_URL", raising=False)
    the_app = App("logs")
    yield the_app
    the_app.close()


def send(app: App, task: str, tag: str) -> str:
    from tests.apps import logging_app

    [task_id] = app.send([logging_app.app.tasks[task].message((tag,))])
    return task_id


def lines_of(output: str, task: str, task_id: str) -> list[re.Match[str]]:
    """The lines logged inside the task ``task[task_id]`` (conveyor's format puts ``task[id]: `` first)."""
    pattern = re.compile(PREFIX + re.escape(f"{task}[{task_id}]: ") + r"(?P<message>.*)$", re.MULTILINE)
    return list(pattern.finditer(output))


@pytest.mark.parametrize("pool", POOLS_UNDER_TEST)
def test_users_log_lines_and_warnings_carry_time_level_pid_and_task_and_survive_sigterm(
    pool: str, app: App, tmp_path: Path
) -> None:
    # Given a worker on POOL running tasks that log through their module's logger, a task logger and warnings
    worker = Worker("tests.apps.logging_app:app", tmp_path, "--pool", pool, "-c", "4")
    try:
        # When a sync and an async task run several times at once, and SIGTERM comes as soon as the results are in
        sent = [(name, f"{name}-{i}") for name in ("chatty", "achatty") for i in range(6)]
        ids = [send(app, name, tag) for name, tag in sent]
        for task_id, (_, tag) in zip(ids, sent, strict=True):
            assert app.result(task_id).get(timeout=30) == tag
        output = worker.stop()
    finally:
        worker.kill()
    # Then each task's own lines name it, with the time, level and pid of the process that ran it
    for task_id, (name, tag) in zip(ids, sent, strict=True):
        lines = lines_of(output, name, task_id)
        by_message = {m["message"]: m for m in lines}
        assert by_message[f"plain info {tag}"]["level"] == "INFO", output
        assert by_message[f"task-logger warning {tag}"]["level"] == "WARNING", output
        assert {m["pid"] for m in lines} == {by_message[f"plain info {tag}"]["pid"]}, output
        assert int(by_message[f"plain info {tag}"]["pid"]) != worker.proc.pid  # a child ran it, not the supervisor
        # And the worker's line for each, written just before SIGTERM, is not lost in a buffer
        assert re.search(PREFIX + re.escape(f"task {name}[{task_id}] succeeded in "), output), output
    # And a warning (shown once per place that warns, per process) is one line with its task and category
    warned = re.findall(PREFIX + r"\w+\[\w+\]: UserWarning: careful with \S+ \(.*logging_app\.py:\d+\)$", output, re.M)
    assert warned, output
    assert "stopped: 12 task(s) processed" in output


def test_a_child_that_exits_right_after_its_task_writes_its_last_lines(app: App, tmp_path: Path) -> None:
    # Given a worker whose child retires after each task (it exits milliseconds after the task's lines)
    worker = Worker("tests.apps.logging_app:app", tmp_path, "-c", "1", CONVEYOR_MAX_TASKS_PER_CHILD="1")
    try:
        # When three tasks run, each in a child of its own
        ids = [send(app, "chatty", f"last-{i}") for i in range(3)]
        for i, task_id in enumerate(ids):
            assert app.result(task_id).get(timeout=30) == f"last-{i}"
        wait_until(lambda: worker.output().count("retired") >= 3, 20, f"three children to retire:\n{worker.output()}")
        output = worker.stop()
    finally:
        worker.kill()
    # Then each child's lines were written before it left (by os._exit: no logging.shutdown there)
    for task_id in ids:
        assert re.search(PREFIX + re.escape(f"task chatty[{task_id}] succeeded in "), output), output


def test_loglevel_warning_hides_a_users_info_line_and_keeps_the_warning(app: App, tmp_path: Path) -> None:
    # Given a worker started with --loglevel WARNING
    worker = Worker("tests.apps.logging_app:app", tmp_path, "-c", "1", "--loglevel", "WARNING", ready=False)
    try:
        # When a task logs at INFO and at WARNING
        task_id = send(app, "chatty", "quiet")
        assert app.result(task_id).get(timeout=30) == "quiet"
        output = worker.stop()
    finally:
        worker.kill()
    # Then only the warning shows, and neither the user's nor conveyor's INFO lines do
    messages = [m["message"] for m in lines_of(output, "chatty", task_id)]
    assert "task-logger warning quiet" in messages, output
    assert "plain info quiet" not in output
    assert " INFO " not in output


def test_the_json_logs_example_writes_one_json_object_per_line_with_the_task(tmp_path: Path) -> None:
    # Given the docs' example: App(log_config=...) with a JSON formatter (examples/json_logs.py)
    worker = Worker("examples.json_logs:app", tmp_path, "-c", "1")
    try:
        # When its task runs
        from examples import json_logs

        producer = App("json-logs", broker=worker.env["CONVEYOR_BROKER_URL"])
        try:
            [task_id] = producer.send([json_logs.ship.message((7,))])
            assert producer.result(task_id).get(timeout=30) == "order 7 shipped"
        finally:
            producer.close()
        output = worker.stop()
    finally:
        worker.kill()
    # Then every line is a JSON object; the task's own line carries its name and id, the worker's lines do not
    records = [json.loads(line) for line in output.splitlines() if line.strip()]
    shipping = [r for r in records if r["message"] == "shipping order 7"]
    assert len(shipping) == 1, output
    assert shipping[0]["task_name"] == "examples.json_logs.ship"
    assert shipping[0]["task_id"] == task_id
    assert shipping[0]["level"] == "INFO"
    ready = next(r for r in records if " ready: " in r["message"])
    assert ready["task_id"] is None and ready["logger"] == "conveyor.worker"
    assert any(r["message"].startswith(f"task examples.json_logs.ship[{task_id}] succeeded") for r in records)
