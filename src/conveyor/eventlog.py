"""The event log: what happened to tasks and workers, kept by the result backend, bounded in size and time.

Workers publish :class:`Event` records in *batches* (one write per worker every ``PUBLISH_EVERY``
seconds, whatever the throughput), so leaving events on costs a handful of round trips per second
and no write per task. A batch is one entry of the backend's log (Redis: a capped stream; SQLite:
a ring table; memory: a bounded deque), trimmed to ``MAX_BATCHES`` entries and to the app's
``events_ttl`` seconds. Readers (``conveyor events``, the dashboard, ``conveyor inspect``) page
through the log with an opaque cursor, so a restarted reader loses nothing the log still holds.

Kinds::

    task-received       a worker reserved the task (its deliveries count, its queue)
    task-started        a task with a hard time limit started, or one that runs long (every pool)
    task-succeeded      task-failed  task-retried  task-revoked  task-dead-lettered
    task-abandoned      it ran; its outcome could not be settled (it runs again when its lease ends)
    worker-online       worker-heartbeat (every few seconds)  worker-offline

A task that ends quickly has no ``task-started`` event of its own: its final event carries its
runtime. ``docs/observability.md`` lists every field.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import msgspec

from conveyor.backends.base import MAX_BATCHES, Store

__all__ = ["KINDS", "MAX_BATCHES", "PUBLISH_EVERY", "Event", "decode_batch", "encode_batch", "follow", "read"]

#: Seconds between two batches one worker publishes.
PUBLISH_EVERY = 0.5

TASK_KINDS = (
    "task-received",
    "task-started",
    "task-succeeded",
    "task-failed",
    "task-retried",
    "task-revoked",
    "task-dead-lettered",
    "task-abandoned",
)
WORKER_KINDS = ("worker-online", "worker-heartbeat", "worker-offline")
KINDS = TASK_KINDS + WORKER_KINDS


class Event(msgspec.Struct, omit_defaults=True):
    """One thing that happened.

    Attributes:
        kind: one of :data:`KINDS`.
        at: Unix time it happened.
        worker: the worker's id (``hostname.pid.nonce``).
        id: the task id (task events).
        task: the task's name, when known (a ``task-received`` event does not decode the message).
        queue: the task's queue (received events) or the worker's queues, comma-separated.
        runtime: seconds the task ran (final events).
        deliveries: deliveries of the message so far (received events; more than 1 is a redelivery).
        info: worker events: ``processed``, ``failed``, ``pool``, ``concurrency``, ``hostname``, ``pid`` and
            ``running`` (the ids its slots run now).
    """

    kind: str
    at: float
    worker: str
    id: str = ""
    task: str = ""
    queue: str = ""
    runtime: float | None = None
    deliveries: int = 0
    info: dict[str, int | str | list[str]] = {}

    def to_dict(self) -> dict[str, object]:
        """A JSON-able dict (``conveyor events --json``, the dashboard)."""
        return {f: getattr(self, f) for f in self.__struct_fields__}


#: The event of each way a delivery ends (``Ended`` values); a missing one is not reported (given back, a duplicate).
FINAL_KINDS = {
    "SUCCESS": "task-succeeded",
    "FAILURE": "task-failed",
    "RETRY": "task-retried",
    "REVOKED": "task-revoked",
    "DEAD": "task-dead-lettered",
    "ABANDONED": "task-abandoned",
}


class _Entry(msgspec.Struct, array_like=True):
    """One log entry: a worker's batch.

    ``compact`` holds its children's reports as they sent them (``[[id, queue, deliveries, at], ...],
    [[id, task, ended, runtime, at], ...]``, msgpack): the worker forwards them without building a
    record per task, and readers expand them here.
    """

    worker: str
    events: list[Event]
    compact: list[bytes] = []


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(_Entry)
_compact_decoder = msgspec.msgpack.Decoder(
    tuple[list[tuple[str, str, int, float]], list[tuple[str, str, str, float, float]]]
)


def encode_batch(events: Sequence[Event], worker: str = "", compact: Sequence[bytes] = ()) -> bytes:
    """One log entry holding ``events`` and the children's ``compact`` reports of ``worker``."""
    return _encoder.encode(_Entry(worker, list(events), list(compact)))


def decode_batch(data: bytes) -> list[Event]:
    """The events of one log entry, in time order; an entry that does not decode (another version) yields none."""
    try:
        entry = _decoder.decode(data)
        events = list(entry.events)
        for report in entry.compact:
            received, ended = _compact_decoder.decode(report)
            events += [
                Event("task-received", at, entry.worker, id=i, queue=q, deliveries=n) for i, q, n, at in received
            ]
            for task_id, task, how, runtime, at in ended:
                kind = FINAL_KINDS.get(how)
                if kind is not None:
                    events.append(Event(kind, at, entry.worker, id=task_id, task=task, runtime=runtime))
    except msgspec.DecodeError:
        return []
    events.sort(key=lambda e: e.at)
    return events


def read(store: Store, after: str | None, limit: int = 1000) -> tuple[list[Event], str | None]:
    """The events after ``after``, flattened out of their batches, and the cursor to read on from."""
    events: list[Event] = []
    for cursor, batch in store.read_events(after, limit):
        events.extend(decode_batch(batch))
        after = cursor
    return events, after


def follow(store: Store, after: str | None, *, poll: float = 0.25, until: float | None = None) -> Iterator[Event]:
    """Yield events as they land, polling every ``poll`` seconds, until the monotonic time ``until`` (None: forever).

    Reads at least once, however soon ``until`` comes.
    """
    while True:
        events, after = read(store, after)
        yield from events
        if until is not None and time.monotonic() >= until:
            return
        if not events:
            time.sleep(poll if until is None else max(0.0, min(poll, until - time.monotonic())))
