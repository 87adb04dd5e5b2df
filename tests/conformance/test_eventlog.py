"""The event log every result backend keeps (eventlog.py): ordered, resumable by cursor, bounded in age."""

from __future__ import annotations

import time

from conveyor import eventlog
from conveyor.backends import ResultBackend
from conveyor.eventlog import Event, decode_batch, encode_batch


def _batch(kind: str, task_id: str) -> bytes:
    return encode_batch([Event(kind, time.time(), "w1", id=task_id, task="t.add", queue="q")])


def test_events_are_read_in_order_and_resumed_from_a_cursor(backend: ResultBackend) -> None:
    assert backend.last_event_cursor() is None
    assert eventlog.read(backend, None) == ([], None)
    backend.append_events(_batch("task-received", "a"), ttl=60)
    backend.append_events(_batch("task-succeeded", "a"), ttl=60)
    events, cursor = eventlog.read(backend, None)
    assert [(e.kind, e.id) for e in events] == [("task-received", "a"), ("task-succeeded", "a")]
    assert cursor == backend.last_event_cursor()
    # A reader that resumes from its cursor sees only what came after it
    backend.append_events(_batch("task-failed", "b"), ttl=60)
    later, _ = eventlog.read(backend, cursor)
    assert [(e.kind, e.id, e.task, e.queue) for e in later] == [("task-failed", "b", "t.add", "q")]
    # limit pages through the entries; newest_events reads from the end
    assert len(backend.read_events(None, 2)) == 2
    newest = backend.newest_events(2)
    assert [e.kind for _, batch in newest for e in decode_batch(batch)] == ["task-succeeded", "task-failed"]
    assert newest[-1][0] == backend.last_event_cursor()
    assert len(backend.newest_events(100)) == 3


def test_events_older_than_their_ttl_are_trimmed(backend: ResultBackend) -> None:
    backend.append_events(_batch("task-received", "old"), ttl=60)
    time.sleep(0.05)
    backend.append_events(_batch("task-received", "new"), ttl=0.02)  # this append trims by the shorter age
    ids = [e.id for _, batch in backend.read_events(None, 100) for e in decode_batch(batch)]
    assert ids == ["new"]


def test_an_undecodable_entry_yields_no_event() -> None:
    assert decode_batch(b"\xc1not msgpack") == []


def test_a_paused_queue_is_left_out_until_resumed(backend: ResultBackend) -> None:
    from conveyor import pausing

    view = pausing.PausedQueues(backend, ("high", "low"))
    assert view.serving() == ("high", "low")
    pausing.pause(backend, "high")
    assert pausing.paused(backend, ["high", "low", "other"]) == {"high"}
    assert view.serving() == ("high", "low")  # a worker trusts what it read for CHECK_EVERY seconds
    view._due = 0.0  # as if a second passed
    assert view.serving() == ("low",)
    pausing.resume(backend, "high")
    view._due = 0.0
    assert view.serving() == ("high", "low") and pausing.paused(backend, ["high"]) == set()


def test_drain_publishes_events_on_the_memory_engine() -> None:
    from conveyor import App
    from conveyor.testing import drain

    app = App("memo", broker_url="memory://", backend_url="memory://")

    @app.task(name="double")
    def double(n: int) -> int:
        return 2 * n

    result = double.delay(2)
    drain(app)
    events = eventlog.read(app.backend, None)[0]
    assert [(e.kind, e.id, e.task) for e in events] == [
        ("task-received", result.id, ""),
        ("task-succeeded", result.id, "double"),
    ]


def test_counters_add_up_across_writers_and_only_grow(backend: ResultBackend) -> None:
    assert backend.counts("metrics") == {}
    backend.add_counts("metrics", {"a\x1fSUCCESS": 2, "a\x1fruntime": 0.25})
    backend.add_counts("metrics", {"a\x1fSUCCESS": 1, "b\x1fFAILURE": 1})
    backend.add_counts("metrics", {})
    backend.add_counts("other", {"x": 5})
    assert backend.counts("metrics") == {"a\x1fSUCCESS": 3.0, "a\x1fruntime": 0.25, "b\x1fFAILURE": 1.0}
    assert backend.counts("other") == {"x": 5.0}
