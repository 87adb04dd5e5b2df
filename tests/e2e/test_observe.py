"""Watching a running system on every broker: the events tail, inspect, Prometheus metrics, pausing a queue."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from conveyor import App, State, eventlog, inspect, pausing
from conveyor.dashboard import create_app
from tests.apps.e2e_app import runs_of
from tests.e2e.conftest import WorkerProcess, enqueue, wait_until
from tests.e2e.test_cli import APP, cli


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text: str = response.read().decode()
    return text


def _value(text: str, series: str) -> float:
    found = re.search(re.escape(series) + r" ([0-9.e+]+)\n", text)
    assert found is not None, f"{series} not in:\n{text}"
    return float(found.group(1))


def _seen(app: App) -> set[tuple[str, str]]:
    return {(e.kind, e.id) for e in eventlog.read(app.backend, None)[0]}


def _wait_until_seen_paused(worker: WorkerProcess, children: int) -> None:
    """Wait until each child logged that it reserves no more from the paused queue ``default``.

    A child reads the flags right before a reserve, at most every second, and logs a change: from that
    line on, it leaves the queue out of every reservation (a reserve waiting as the pause came ends
    first, within its 1 s wait, which is why a fixed sleep had to be 3 s).
    """
    line = "not reserving from paused queue(s) default"
    wait_until(lambda: worker.output().count(line) >= children, 10, f"{children} child(ren) to log {line!r}")


@pytest.mark.timeout(150)  # a dozen CLI processes: each one takes seconds on a loaded machine
def test_events_inspect_metrics_and_pause_on_every_broker(
    e2e_env: dict[str, str], e2e_app: App, start_worker: Callable[..., WorkerProcess], records: Path
) -> None:
    worker = start_worker("-c", "2", "--metrics-port", "0")
    found = re.search(r"metrics on http://0.0.0.0:(\d+)/metrics", worker.output())
    assert found is not None, worker.output()
    # Given tasks that succeed, one that fails, and a long one
    done = [enqueue(e2e_app, "record", f"ok{i}") for i in range(3)]
    failed = enqueue(e2e_app, "boom", "bad")
    slow = enqueue(e2e_app, "record", "slow", 10)
    # Then inspect shows the long task running (from the next heartbeat), the workers and the app's tasks
    wait_until(lambda: slow.id in {v.id for v in inspect.held(e2e_app)[0]}, 8, "the running task in inspect")
    assert slow.id in cli(e2e_env, "inspect", APP, "active", "--json").stdout
    assert "record" in cli(e2e_env, "inspect", APP, "registered").stdout

    for result in done:
        result.get(timeout=20)
    wait_until(lambda: failed.state is State.FAILURE, 20, "the failing task to fail")

    # Then the event log holds their life (published every half second)
    wanted = {("task-failed", failed.id), ("task-received", failed.id), ("worker-online", "")}
    wanted |= {(kind, r.id) for r in done for kind in ("task-received", "task-succeeded")}
    wait_until(lambda: wanted <= _seen(e2e_app), 5, f"the events {wanted - _seen(e2e_app)}")

    # And conveyor events replays them (--all), as JSON lines and as text
    out = cli(e2e_env, "events", APP, "--all", "--json", "--for", "0.2").stdout
    assert ("task-succeeded", done[0].id) in {(e["kind"], e["id"]) for e in map(json.loads, out.splitlines())}

    # And the worker's /metrics counts them per task and state, beside the broker's gauges
    text = _metrics(int(found.group(1)))
    assert _value(text, 'conveyor_tasks_total{state="SUCCESS",task="record"}') in (3, 4)  # 4: the slow one ended
    assert _value(text, 'conveyor_tasks_total{state="FAILURE",task="boom"}') == 1
    assert _value(text, 'conveyor_task_runtime_seconds_count{task="record"}') in (3, 4)
    assert "conveyor_workers_up 1.0" in text and 'conveyor_queue_depth{queue="default"}' in text

    # And the dashboard's views read the same engine (the browser test drives them on Redis)
    client = TestClient(create_app(e2e_app))
    overview = client.get("/api/overview").json()
    assert overview["workers"] == 1 and [q["queue"] for q in overview["queues"]] == ["default"]
    assert any(e["id"] == done[0].id for e in client.get("/api/tasks").json()["tasks"])
    assert client.get(f"/api/tasks?id={failed.id}").json()["task"]["errors"][0]["type"] == "RuntimeError"
    assert "conveyor_workers_up 1.0" in client.get("/metrics").text

    # When the queue is paused, workers stop taking from it; resumed, they take its task
    assert "paused queue default" in cli(e2e_env, "queue", "pause", APP, "default").stdout
    assert [q.paused for q in inspect.queues(e2e_app) if q.stats.queue == "default"] == [True]
    _wait_until_seen_paused(worker, children=2)
    held = enqueue(e2e_app, "record", "held")
    time.sleep(1.0)  # an idle worker serving the queue takes a new task within milliseconds (the enqueue wakes it)
    assert runs_of(records, "held") == 0 and held.state is State.PENDING
    cli(e2e_env, "queue", "resume", APP, "default")
    assert held.get(timeout=10) == "held"
    assert slow.get(timeout=20) == "slow"
    assert worker.stop() == 0
    assert ("worker-offline", "") in _seen(e2e_app)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("e2e_env", ["redis"], indirect=True)
def test_every_pool_reports_events_and_honours_a_pause(
    e2e_app: App, start_worker: Callable[..., WorkerProcess], records: Path, pool: str
) -> None:
    worker = start_worker("--pool", pool, "-c", "2")
    first = enqueue(e2e_app, "record", "first")
    assert first.get(timeout=20) == "first"
    wanted = {("task-received", first.id), ("task-succeeded", first.id)}
    wait_until(lambda: wanted <= _seen(e2e_app), 5, f"the events of a task on the {pool} pool")
    pausing.pause(e2e_app.backend, "default")
    _wait_until_seen_paused(worker, children=2 if pool == "process" else 1)
    held = enqueue(e2e_app, "record", "held")
    time.sleep(1.0)  # an idle worker serving the queue takes a new task within milliseconds (the enqueue wakes it)
    assert runs_of(records, "held") == 0, f"the {pool} pool took a task from a paused queue"
    pausing.resume(e2e_app.backend, "default")
    assert held.get(timeout=15) == "held"
