"""Watching a running system on every broker: the events tail, inspect, Prometheus metrics, pausing a queue."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
from starlette.testclient import TestClient

from conveyor import App, State, eventlog, inspect, pausing
from conveyor.dashboard import create_app
from conveyor.dashboard.security import CSRF_COOKIE
from conveyor.message import Message
from tests.apps.e2e_app import runs_of
from tests.e2e.conftest import ROOT, WorkerProcess, enqueue, wait_until
from tests.e2e.test_cli import APP, cli


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text: str = response.read().decode()
    return text


def _value(text: str, series: str) -> float:
    found = re.search(re.escape(series) + r" ([0-9.e+]+)\n", text)
    assert found is not None, f"{series} not in:\n{text}"
    return float(found.group(1))


def _has(text: str, series: str, value: float) -> bool:
    found = re.search(re.escape(series) + r" ([0-9.e+]+)\n", text)
    return found is not None and float(found.group(1)) == value


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
    e2e_env: dict[str, str], e2e_app: App, start_worker: Callable[..., WorkerProcess], records: Path, tmp_path: Path
) -> None:
    # A live tail started before anything happens (it reads on from the log's end as it was then)
    tail_out = (tmp_path / "tail.jsonl").open("w")
    tail = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "events", APP, "--json", "--for", "120"],
        cwd=ROOT, env=e2e_env, stdout=tail_out, stderr=subprocess.STDOUT,
    )  # fmt: skip

    def tail_follows() -> bool:  # a marker appended after it read the log's end shows up in it
        e2e_app.backend.append_events(
            eventlog.encode_batch([eventlog.Event("worker-heartbeat", time.time(), "mark")]), 60
        )
        time.sleep(0.5)
        return '"mark"' in (tmp_path / "tail.jsonl").read_text()

    wait_until(tail_follows, 60, "conveyor events to follow the log")
    worker = start_worker("-c", "2", "--metrics-port", "0")
    found = re.search(r"metrics on http://0.0.0.0:(\d+)/metrics", worker.output())
    assert found is not None, worker.output()
    # Given tasks that succeed, one that fails, a long one, a dead letter and a scheduled one
    done = [enqueue(e2e_app, "record", f"ok{i}") for i in range(3)]
    failed = enqueue(e2e_app, "boom", "bad")
    slow = enqueue(e2e_app, "record", "slow", 10)
    doomed = enqueue(e2e_app, "doomed", "dead")
    enqueue(e2e_app, "record", "later", countdown=600)
    # Then inspect shows the long task running (from the next heartbeat), the workers and the app's tasks
    wait_until(lambda: slow.id in {v.id for v in inspect.held(e2e_app)[0]}, 8, "the running task in inspect")
    assert slow.id in cli(e2e_env, "inspect", APP, "active", "--json").stdout
    assert "record" in cli(e2e_env, "inspect", APP, "registered").stdout
    assert [(w.pool, w.concurrency) for w in inspect.workers(e2e_app)] == [("process", 2)]
    assert [q.stats.scheduled for q in inspect.queues(e2e_app) if q.stats.queue == "default"] == [1]
    assert slow.id not in {v.id for v in inspect.held(e2e_app)[1]}  # running: not among the reserved

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
    # And the live tail, started before the worker, showed them as they landed
    try:
        wait_until(lambda: f'"{failed.id}"' in (tmp_path / "tail.jsonl").read_text(), 10, "the tail to show them")
    finally:
        tail.terminate()
        tail.wait(timeout=10)
        tail_out.close()
    tailed = {(e["kind"], e["id"]) for e in map(json.loads, (tmp_path / "tail.jsonl").read_text().splitlines())}
    assert {("worker-online", ""), ("task-succeeded", done[0].id), ("task-failed", failed.id)} <= tailed

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
    # And the dashboard's /metrics serves the same task series, from the engine's counters (added every half second)
    wait_until(
        lambda: _has(client.get("/metrics").text, 'conveyor_tasks_total{state="FAILURE",task="boom"}', 1),
        5,
        "the dashboard's task series",
    )
    board = client.get("/metrics").text
    assert _value(board, 'conveyor_tasks_total{state="SUCCESS",task="record"}') in (3, 4)
    assert _value(board, 'conveyor_task_runtime_seconds_count{task="record"}') in (3, 4)
    assert _value(board, 'conveyor_task_runtime_seconds_bucket{le="+Inf",task="record"}') in (3, 4)
    assert _value(board, 'conveyor_received_total{queue="default"}') >= 5
    assert "conveyor_workers_up 1.0" in board and 'conveyor_queue_depth{queue="default"}' in board
    # And its other views: the worker's heartbeat and pool, the queue's scheduled task, the dead letter
    [row] = client.get("/api/workers").json()["workers"]
    assert row["pool"] == "process" and row["heartbeat_age"] < 10
    assert [q["scheduled"] for q in client.get("/api/queues").json()["queues"]] == [1]
    assert client.get("/api/periodic").json()["periodic"] == []
    wait_until(lambda: doomed.state is State.FAILURE, 20, "the doomed task to fail")
    assert [d["id"] for d in client.get("/api/dead").json()["dead_letters"]] == [doomed.id]
    # When the dead letter is requeued (a POST with the CSRF value), it runs again (and dies again)
    client.get("/dead")
    requeued = client.post("/dead/requeue", data={"csrf": client.cookies[CSRF_COOKIE], "id": doomed.id})
    assert requeued.status_code == 200  # followed its redirect to /dead

    def runs_of_doomed() -> int:
        return sum((e.kind, e.id) == ("task-failed", doomed.id) for e in eventlog.read(e2e_app.backend, None)[0])

    wait_until(lambda: runs_of_doomed() == 2, 15, "the requeued dead letter to run again")

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
    # And each task ran once on the live worker (the records file notes every start)
    assert [runs_of(records, tag) for tag in ("ok0", "ok1", "ok2", "bad", "slow", "held")] == [1] * 6


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


@pytest.mark.timeout(120)
@pytest.mark.parametrize("e2e_env", ["redis"], indirect=True)
def test_every_pool_publishes_every_task_event(
    e2e_app: App, start_worker: Callable[..., WorkerProcess], pool: str
) -> None:
    """received, started (a long async task), succeeded, failed, retried, revoked, dead-lettered: on each pool."""
    from tests.apps import e2e_app as tasks

    def send(message: Message) -> str:
        [task_id] = e2e_app.send([message])
        return task_id

    start_worker("--pool", pool, "-c", "2")
    ok = enqueue(e2e_app, "record", "ok")
    long = enqueue(e2e_app, "async_nap", "long", 1.5)  # long enough for every pool to report its start
    failed = enqueue(e2e_app, "boom", "bad")
    retried = enqueue(e2e_app, "boom_retried", "again").id
    revoked = send(msgspec.structs.replace(tasks.app.tasks["record"].message(("late",)), expires=time.time() - 1))
    dead = send(msgspec.structs.replace(tasks.app.tasks["record"].message(("lost",)), task="no.such.task"))
    wanted = {
        ("task-received", ok.id),
        ("task-succeeded", ok.id),
        ("task-started", long.id),
        ("task-succeeded", long.id),
        ("task-failed", failed.id),
        ("task-retried", retried),
        ("task-failed", retried),
        ("task-revoked", revoked),
        ("task-dead-lettered", dead),
    }
    with contextlib.suppress(AssertionError):  # then name what is missing
        wait_until(lambda: wanted <= _seen(e2e_app), 20, "every kind of task event")
    assert wanted - _seen(e2e_app) == set(), f"events missing on the {pool} pool"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("e2e_env", ["redis"], indirect=True)
def test_a_hard_limited_async_task_reports_its_start_at_once(
    e2e_app: App, start_worker: Callable[..., WorkerProcess]
) -> None:
    """On the asyncio pool the start of a task with a hard time limit reaches the log before its limit ends it."""
    start_worker("--pool", "asyncio", "-c", "2")
    hung = enqueue(e2e_app, "async_hang", "hung")  # time_limit=1.0: cancelled after a second, FAILURE
    wait_until(lambda: ("task-failed", hung.id) in _seen(e2e_app), 20, "the hard limit to end the task")
    events = {e.kind: e for e in eventlog.read(e2e_app.backend, None)[0] if e.id == hung.id}
    started = events["task-started"]
    assert started.task == "async_hang" and started.queue == "default"
    assert started.at < events["task-failed"].at - 0.5  # reported as it started, not once it ran long
