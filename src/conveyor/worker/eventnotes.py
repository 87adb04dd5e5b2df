"""What a child noted for the event log since its last report: deliveries received, and ended unreported.

A child's pools note here from any of its threads, and the child's flusher thread takes what was
noted every half second (under one lock) and sends it in one pipe message beside its counts.
Nothing is noted when the app publishes no events and serves no metrics. A task whose start was
reported ends in a TaskFinished instead (worker/events.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from conveyor.brokers import Delivery
from conveyor.middleware import Outcome
from conveyor.worker.events import EndedTask, Happened, Received, happened


class EventNotes:
    """The notes of one child (``enabled``: the app publishes events or serves metrics)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._lock = threading.Lock()
        self._received: list[Received] = []
        self._ended: list[EndedTask] = []

    def __bool__(self) -> bool:
        """Whether anything was noted since the last :meth:`take`."""
        return bool(self._received or self._ended)

    def received(self, deliveries: Sequence[Delivery]) -> None:
        """Note freshly reserved deliveries."""
        if self.enabled and deliveries:
            now = time.time()
            with self._lock:
                self._received.extend((d.id, d.queue, d.deliveries, now) for d in deliveries)

    def ended(self, outcome: Outcome) -> None:
        """Note a delivery that ended without a start report."""
        if self.enabled:
            noted = (outcome.id, outcome.task, outcome.ended, outcome.runtime, time.time())
            with self._lock:
                self._ended.append(noted)

    def take(self) -> Happened | None:
        """The report of everything noted so far (None when nothing was), and start afresh."""
        with self._lock:
            if not self:
                return None
            received, ended, self._received, self._ended = self._received, self._ended, [], []
        return happened(received, ended)
