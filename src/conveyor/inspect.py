"""The ops layer: what ``conveyor inspect``, ``conveyor events`` and the dashboard read, on every engine.

Everything comes from the broker (queue counts, live workers, dead letters), the result backend
(task records, pause flags) and its event log: nothing is held in the reader's memory, so a
restarted dashboard shows what it showed before. What each worker runs now comes from its latest
``worker-heartbeat`` event (every 2 s); what it has reserved is what it received and has not ended
or started, read from the recent events of live workers.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from conveyor import eventlog
from conveyor.app import App
from conveyor.brokers import QueueStats, WorkerInfo
from conveyor.eventlog import Event
from conveyor.pausing import paused

#: Seconds of events :func:`recent` reads back (heartbeats come every 2 s; reservations live that long).
RECENT = 120.0
#: Most log entries one look reads (the newest ones).
RECENT_ENTRIES = 2000


@dataclasses.dataclass(frozen=True, slots=True)
class QueueView:
    """A queue as the dashboard and ``conveyor queue list`` show it."""

    stats: QueueStats
    paused: bool

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self.stats), "paused": self.paused}


@dataclasses.dataclass(frozen=True, slots=True)
class TaskView:
    """A task a worker holds: running (``active``) or reserved, waiting for a slot."""

    id: str
    worker: str
    task: str
    queue: str
    since: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def queues(app: App) -> list[QueueView]:
    """Every known queue with its counts and whether it is paused."""
    stats = app.broker.stats()
    stopped = paused(app.backend, [q.queue for q in stats])
    return [QueueView(q, q.queue in stopped) for q in stats]


def workers(app: App) -> list[WorkerInfo]:
    """Live workers (heartbeat younger than its ttl)."""
    return app.broker.workers()


def recent(app: App, seconds: float = RECENT) -> list[Event]:
    """The events of the last ``seconds`` (at most RECENT_ENTRIES log entries), oldest first."""
    since = time.time() - seconds
    entries = app.backend.newest_events(RECENT_ENTRIES)
    events = [e for _, batch in entries for e in eventlog.decode_batch(batch) if e.at >= since]
    return sorted(events, key=lambda e: e.at)


def held(app: App) -> tuple[list[TaskView], list[TaskView]]:
    """(active, reserved): the tasks live workers run now, and the ones they reserved that wait for a slot."""
    live = {w.id for w in workers(app)}
    events = recent(app)
    running: dict[str, set[str]] = {}  # worker -> ids in its latest heartbeat
    for e in events:
        if e.kind == "worker-heartbeat" and e.worker in live:
            ids = e.info.get("running", [])
            running[e.worker] = set(ids) if isinstance(ids, list) else set()
    received: dict[str, TaskView] = {}
    names: dict[str, str] = {}
    for e in events:
        if e.task:
            names[e.id] = e.task
        if e.kind == "task-received" and e.worker in live:
            received[e.id] = TaskView(e.id, e.worker, "", e.queue, e.at)
        elif e.kind in eventlog.TASK_KINDS and e.kind not in ("task-received", "task-started"):
            received.pop(e.id, None)
    active: list[TaskView] = []
    reserved: list[TaskView] = []
    for view in received.values():
        view = dataclasses.replace(view, task=names.get(view.id, ""))
        (active if view.id in running.get(view.worker, set()) else reserved).append(view)
    for worker, running_ids in running.items():  # running, but received before the window
        for task_id in running_ids - received.keys():
            active.append(TaskView(task_id, worker, names.get(task_id, ""), "", 0.0))
    return active, reserved


def registered(app: App) -> list[dict[str, Any]]:
    """The app's tasks with the options that decide where and how they run."""
    rows = []
    for name, task in sorted(app.tasks.items()):
        options = task.options
        rows.append(
            {
                "name": name,
                "queue": options.queue or app.settings.default_queue,
                "priority": options.priority,
                "retries": options.retries,
                "time_limit": options.time_limit,
                "async": task.is_async,
            }
        )
    return rows
