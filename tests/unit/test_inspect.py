"""The ops layer's view of what live workers hold, from the event log (memory engine)."""

from __future__ import annotations

import time

from conveyor import App, inspect
from conveyor.brokers import WorkerInfo
from conveyor.eventlog import Event, encode_batch


def test_active_and_reserved_come_from_the_latest_heartbeat_and_the_unended_receipts() -> None:
    app = App("shop", broker_url="memory://", backend_url="memory://")
    now = time.time()
    app.broker.register_worker(WorkerInfo("w1", "host", 1, ("default",), 2, "process", now, now), ttl=10)
    events = [
        Event("task-received", now, "w1", id="a", queue="default"),
        Event("task-received", now, "w1", id="b", queue="default"),
        Event("task-received", now, "w1", id="c", queue="default"),
        Event("task-succeeded", now, "w1", id="c", task="shop.add", runtime=0.1),
        Event("task-started", now, "w1", id="a", task="shop.slow", queue="default"),
        Event("worker-heartbeat", now, "w1", info={"running": ["a"]}),
        Event("task-received", now, "gone", id="d", queue="default"),  # a worker that is not live
    ]
    app.backend.append_events(encode_batch(events), ttl=60)
    active, reserved = inspect.held(app)
    assert [(v.id, v.worker, v.task) for v in active] == [("a", "w1", "shop.slow")]
    assert [(v.id, v.queue) for v in reserved] == [("b", "default")]
    assert [w.id for w in inspect.workers(app)] == ["w1"]
