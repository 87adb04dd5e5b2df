"""Helpers for testing code that uses conveyor, without a worker process.

::

    app = App("shop", broker="memory://")

    def test_receipt() -> None:
        r = send_receipt.delay(42)
        drain(app)                       # runs every ready task here, in this thread
        assert r.get(timeout=1) == "sent"

``drain`` uses the same executor and the same middleware chain as a real worker (results,
retries, dead letters, the app's own middleware, with their ``on_child_start``/``on_child_stop``
hooks around the drain), so what passes here behaves the same under ``conveyor worker``. It
publishes each batch's events to the event log too (as worker ``drain``), unless ``events=False``.
"""

from __future__ import annotations

import time

from conveyor.app import App
from conveyor.brokers import Delivery
from conveyor.worker.events import happened
from conveyor.worker.executor import Executor, Outcome
from conveyor.worker.observer import Observer

__all__ = ["drain"]

#: Seconds between the two looks at an idle broker after which :func:`drain` stops.
SETTLE = 0.05


def drain(
    app: App, queues: list[str] | None = None, *, timeout: float = 10.0, include_scheduled: bool = True
) -> list[Outcome]:
    """Run tasks in this thread until no ready (and, by default, no scheduled) task is left.

    Args:
        app: the app whose broker to drain.
        queues: queues to serve; every known queue by default.
        timeout: seconds after which draining stops even if tasks remain (e.g. retries forever).
        include_scheduled: also wait for countdown/ETA and retry-delayed tasks to come due.

    Returns:
        The outcome of every task run, in order.
    """
    executor = Executor(app, "drain")
    deadline = time.monotonic() + timeout
    outcomes: list[Outcome] = []
    executor.start()
    try:
        _drain_into(app, executor, queues, deadline, include_scheduled, outcomes)
    finally:
        executor.close()
    return outcomes


def _drain_into(
    app: App,
    executor: Executor,
    queues: list[str] | None,
    deadline: float,
    include_scheduled: bool,
    outcomes: list[Outcome],
) -> None:
    while time.monotonic() < deadline:
        names = queues or [s.queue for s in app.broker.stats()] or [app.settings.default_queue]
        deliveries = app.broker.reserve(names, 100, owner="drain", lease=app.settings.lease, timeout=0.0)
        ran = [executor.run(delivery) for delivery in deliveries]
        outcomes += ran
        if deliveries:
            _publish(app, deliveries, ran)
            continue
        # An empty reserve is not proof of an empty queue. On RabbitMQ a message a scan just put
        # back (revoke, purge), or one moving from a delay level to its queue, is for a moment
        # neither handed out nor counted. So stop only when the broker's own counts show nothing
        # ready (or, by default, scheduled) on two looks SETTLE seconds apart.
        if _busy(app, queues, include_scheduled):
            time.sleep(0.01)
            continue
        time.sleep(SETTLE)
        if not _busy(app, queues, include_scheduled):
            break


def _publish(app: App, deliveries: list[Delivery], ran: list[Outcome]) -> None:
    """Put what this batch did in the event log, as a worker would (nothing when the app's events are off)."""
    if not app.settings.events:
        return
    now = time.time()
    observer = Observer(app, "drain")
    observer.happened(
        happened(
            [(d.id, d.queue, d.deliveries, now) for d in deliveries],
            [(o.id, o.task, o.ended, o.runtime, now) for o in ran],
        )
    )
    observer.publish(force=True)


def _busy(app: App, queues: list[str] | None, include_scheduled: bool) -> bool:
    """Whether the broker counts a ready (or, with ``include_scheduled``, a scheduled) message."""
    pending = [s for s in app.broker.stats() if (queues is None or s.queue in queues)]
    return any(s.ready or (include_scheduled and s.scheduled) for s in pending)
