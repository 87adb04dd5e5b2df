"""What each dashboard page shows, as JSON-able data read through the ops layer (``conveyor.inspect``).

The pages are HTML shells; their script (``static/dashboard.js``) polls these views every second, so
a page shows what the engines hold now and the dashboard keeps nothing of its own.
"""

from __future__ import annotations

import re
import time
from typing import Any

from conveyor import inspect
from conveyor.app import App
from conveyor.codec import Codec
from conveyor.errors import DecodeError
from conveyor.eventlog import Event
from conveyor.scheduler.beat import overview as periodic_overview
from conveyor.settings import redact_url
from conveyor.states import decode_record

#: Argument names whose values the dashboard never shows.
SECRET_NAMES = re.compile(r"pass|secret|token|key|auth|credential|cookie", re.IGNORECASE)
MASK = "••••••"
#: Events the overview lists (newest first).
FEED = 50


def mask(value: Any, name: str = "") -> Any:
    """``value`` with every item under a secret-looking name masked, recursively."""
    if name and SECRET_NAMES.search(name):
        return MASK
    if isinstance(value, dict):
        return {k: mask(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask(v) for v in value]
    return value


def overview(app: App) -> dict[str, Any]:
    """Queues, workers, the last minute's throughput and failures, and the newest events."""
    events = inspect.recent(app, seconds=60)
    now = time.time()
    succeeded = sum(1 for e in events if e.kind == "task-succeeded")
    failed = sum(1 for e in events if e.kind in ("task-failed", "task-dead-lettered"))
    per_second = [0] * 60
    for e in events:
        if e.kind == "task-succeeded" and 0 <= now - e.at < 60:
            per_second[59 - int(now - e.at)] += 1
    task_events = [e for e in events if e.kind.startswith("task-")]
    return {
        "app": app.name,
        "broker": redact_url(app.settings.broker_url),
        "queues": [q.to_dict() for q in inspect.queues(app)],
        "workers": len(inspect.workers(app)),
        "succeeded_last_minute": succeeded,
        "failed_last_minute": failed,
        "per_second": per_second,
        "events": [_event(e) for e in reversed(task_events[-FEED:])],
    }


def queues(app: App) -> dict[str, Any]:
    return {"queues": [q.to_dict() for q in inspect.queues(app)]}


def workers(app: App) -> dict[str, Any]:
    """Live workers with their heartbeat age and the tasks they run."""
    active, _ = inspect.held(app)
    now = time.time()
    rows = []
    for w in inspect.workers(app):
        row = w.to_dict()
        row["heartbeat_age"] = round(now - w.last_seen, 1)
        row["running"] = [f"{v.task or '?'}[{v.id}]" for v in active if v.worker == w.id]
        rows.append(row)
    return {"workers": rows}


def tasks(app: App, task_id: str = "", name: str = "", state: str = "") -> dict[str, Any]:
    """One task by id (its record), or the recent tasks filtered by name and state."""
    if task_id:
        return {"task": task(app, task_id)}
    latest: dict[str, Event] = {}
    names: dict[str, str] = {}  # a task-received event does not know the task's name; its later events do
    for e in inspect.recent(app, seconds=app.settings.events_ttl):
        if e.kind.startswith("task-"):
            latest[e.id] = e
            names[e.id] = e.task or names.get(e.id, "")
    rows = [{**_event(e), "task": names[e.id]} for e in sorted(latest.values(), key=lambda e: -e.at)]
    if name:
        rows = [r for r in rows if name.lower() in r["task"].lower()]
    if state:
        rows = [r for r in rows if r["kind"] == state]
    return {"tasks": rows[:200]}


def task(app: App, task_id: str) -> dict[str, Any] | None:
    """A task's record: state, result, progress, every attempt's error; its arguments if it is a dead letter."""
    raw = app.backend.get(task_id)
    found: dict[str, Any] = {"id": task_id}
    if raw is not None:
        record = decode_record(raw)
        found.update(
            state=record.state.value,
            task=record.task,
            result=mask(record.value),
            progress=record.progress,
            attempt=record.attempt,
            worker=record.worker,
            started=record.started,
            finished=record.finished,
            note=record.note,
            errors=[{"attempt": e.attempt, "type": e.type, "message": e.message, "traceback": e.traceback}
                    for e in record.errors],
        )  # fmt: skip
    dead = next((d for d in app.broker.dead_letters(limit=100_000) if d.id == task_id), None)
    if dead is not None:
        found.update(dead_reason=dead.reason, queue=dead.queue, **_arguments(dead.body))
    return found if len(found) > 1 else None


def dead_letters(app: App) -> dict[str, Any]:
    rows = []
    for d in app.broker.dead_letters(limit=500):
        rows.append({"id": d.id, "queue": d.queue, "reason": d.reason, "dead_at": d.dead_at,
                     "deliveries": d.deliveries, **_arguments(d.body)})  # fmt: skip
    return {"dead_letters": rows}


def periodic(app: App) -> dict[str, Any]:
    """The periodic entries, and which beat holds the leader lease (``beat:<app>``, see scheduler/beat.py)."""
    return {
        "periodic": [e.to_dict() for e in periodic_overview(app)],
        "leader": app.backend.lease_holder(f"beat:{app.name}"),
    }


def _arguments(body: bytes) -> dict[str, Any]:
    try:
        message = Codec().decode(body)  # the plain codec: shows a signed body without the secret
    except DecodeError:
        return {"task": "(undecodable)", "args": [], "kwargs": {}}
    return {"task": message.task, "args": mask(list(message.args)), "kwargs": mask(dict(message.kwargs))}


def _event(e: Event) -> dict[str, Any]:
    return {"kind": e.kind, "at": e.at, "id": e.id, "task": e.task, "queue": e.queue, "runtime": e.runtime,
            "worker": e.worker}  # fmt: skip
