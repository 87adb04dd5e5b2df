"""Observer: turns what a supervisor's children report into event-log batches and Prometheus metrics.

The children tell their supervisor what their tasks did (worker/events.py: ``Happened`` per batch,
``TaskStarted``/``TaskFinished`` for tasks it watches). The observer keeps one batch of
:class:`~conveyor.eventlog.Event` records and appends it to the result backend's event log every
``PUBLISH_EVERY`` seconds: one write per worker per half second, whatever the throughput. A failed
write is logged once per outage and the batch dropped (events are for watching, not for delivery).
With each batch it adds its children's counts (tally.py) to the engine's counters (what the
dashboard's ``/metrics`` serves); those are kept through an outage and added once the engine answers.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from conveyor.app import App
from conveyor.brokers import WorkerInfo
from conveyor.errors import BrokerError
from conveyor.eventlog import FINAL_KINDS, PUBLISH_EVERY, Event, encode_batch
from conveyor.tally import COUNTS_KEY, add, count
from conveyor.worker.events import Ended, Happened, TaskFinished, TaskRunning, TaskStarted
from conveyor.worker.outage import Outage

if TYPE_CHECKING:
    from conveyor.metrics import WorkerMetrics

log = logging.getLogger("conveyor.worker")

#: Most events and children's reports a batch holds; past it the oldest half are dropped (a backend outage).
MAX_PENDING = 10_000


class Observer:
    """A supervisor's event batch and metrics.

    Args:
        app: the app (its backend keeps the log; ``settings.events`` turns publishing on).
        worker_id: the worker's id, on every event.
        metrics: the worker's Prometheus registry, or None without ``--metrics-port``.
    """

    def __init__(self, app: App, worker_id: str, metrics: WorkerMetrics | None = None) -> None:
        self.app = app
        self.worker_id = worker_id
        self.metrics = metrics
        self.publishing = app.settings.events
        self._batch: list[Event] = []
        self._compact: list[bytes] = []  # the children's reports, forwarded as they came
        self._due = 0.0
        self._outage = Outage("event log")
        self._counting = self.publishing  # the engine's counters get this worker's counts (tally.py)
        self._counts: dict[str, float] = {}  # what the next batch adds to them

    def happened(self, report: Happened) -> None:
        """A child's batch of received and ended deliveries: forwarded as it is, its counts added up (never decoded)."""
        if self.publishing:
            self._compact.append(report.payload)
            self._trim()
            if self._counting:
                add(self._counts, report.counts)
        if self.metrics is not None:
            self.metrics.add(report.counts)

    def started(self, event: TaskStarted | TaskRunning) -> None:
        """A task whose start a child reported (a hard time limit, or a long run)."""
        self._add(Event("task-started", time.time(), self.worker_id, id=event.id, task=event.task, queue=event.queue))

    def finished(self, event: TaskFinished) -> None:
        """A reported task that ended."""
        self._ended(event.id, event.task, event.ended, event.runtime, time.time())

    def killed(self, task_id: str, task: str, ended: Ended) -> None:
        """A task the supervisor ended itself (past its hard time limit, terminated)."""
        self._ended(task_id, task, ended, 0.0, time.time())

    def worker(self, kind: str, info: WorkerInfo, running: list[str]) -> None:
        """A worker event (online, heartbeat, offline) with the worker's counts and the ids it runs now."""
        details: dict[str, int | str | list[str]] = {
            "processed": info.processed,
            "failed": info.failed,
            "pool": info.pool,
            "concurrency": info.concurrency,
            "running": running,
            "hostname": info.hostname,
            "pid": info.pid,
        }
        self._add(Event(kind, time.time(), self.worker_id, queue=",".join(info.queues), info=details))

    def publish(self, force: bool = False) -> None:
        """Append the batch to the event log, at most every PUBLISH_EVERY seconds unless ``force``."""
        now = time.monotonic()
        if not (self._batch or self._compact) or not (force or now >= self._due):
            return
        self._due = now + PUBLISH_EVERY
        batch, compact, self._batch, self._compact = self._batch, self._compact, [], []
        counts, self._counts = self._counts, {}
        try:
            self.app.backend.append_events(encode_batch(batch, self.worker_id, compact), self.app.settings.events_ttl)
            self._add_counts(counts)
        except NotImplementedError as exc:
            log.warning("events are off: %s", exc)
            self.publishing = False
        except BrokerError as exc:
            self._outage.failed(exc, "publishing events")
            add(self._counts, counts)  # counters are totals: what was not added goes with the next batch
        else:
            self._outage.answered()

    def _add_counts(self, counts: dict[str, float]) -> None:
        if not self._counting:
            return
        try:
            self.app.backend.add_counts(COUNTS_KEY, counts)
        except NotImplementedError as exc:  # a store with an event log but no counters: the log goes on
            log.warning("the dashboard's task series are off: %s", exc)
            self._counting = False

    def _ended(self, task_id: str, task: str, ended: Ended, runtime: float, at: float) -> None:
        kind = FINAL_KINDS.get(ended)
        if kind is None:
            return
        counts = count([], [(task_id, task, ended, runtime, at)])
        if self.metrics is not None:
            self.metrics.add(counts)
        if self.publishing and self._counting:
            add(self._counts, counts)
        self._add(Event(kind, at, self.worker_id, id=task_id, task=task, runtime=runtime))

    def _add(self, event: Event) -> None:
        if not self.publishing:
            return
        self._batch.append(event)
        self._trim()

    def _trim(self) -> None:
        if len(self._batch) + len(self._compact) > MAX_PENDING:  # an outage: drop the oldest half
            del self._batch[: len(self._batch) // 2]
            del self._compact[: len(self._compact) // 2]
