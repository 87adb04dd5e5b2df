"""Pausing a queue across every worker: one flag per queue in the result backend, read once a second.

``conveyor queue pause APP Q`` (and the dashboard) set the flag ``paused:Q`` with the backend's
value primitive (:meth:`~conveyor.backends.base.Store.set_value`), so it works on every engine and
survives restarts. Each worker child keeps a :class:`PausedQueues` that re-reads the flags of its
queues at most every ``CHECK_EVERY`` seconds and leaves paused queues out of its reservations:
no extra call per task. Tasks already reserved or running finish; enqueueing to a paused queue works.

A broker that can tell when its idle workers were woken (:meth:`Broker.wake_version`: PostgreSQL, whose
idle workers otherwise send no query) spares the re-read while nothing woke them: pausing and resuming
signal the workers through the store (:meth:`Store.signal_workers`), after the flag is written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from conveyor.backends.base import Store
from conveyor.errors import BrokerError

log = logging.getLogger("conveyor.worker")

#: Seconds a worker child trusts what it last read of the flags.
CHECK_EVERY = 1.0


def _flag(queue: str) -> str:
    return f"paused:{queue}"


def pause(store: Store, queue: str) -> None:
    """Stop every worker from reserving from ``queue`` (within CHECK_EVERY seconds) until :func:`resume`."""
    store.set_value(_flag(queue), str(time.time()).encode())
    store.signal_workers()


def resume(store: Store, queue: str) -> None:
    """Let workers reserve from ``queue`` again."""
    store.delete_value(_flag(queue))
    store.signal_workers()


def paused(store: Store, queues: Iterable[str]) -> set[str]:
    """Which of ``queues`` are paused now."""
    return {queue for queue in queues if store.get_value(_flag(queue)) is not None}


class PausedQueues:
    """A worker child's view of its queues: the ones to reserve from, re-read every CHECK_EVERY seconds.

    Args:
        store: the app's result backend.
        queues: the queues the worker serves, in priority order.
        wake_version: the broker's :meth:`~conveyor.brokers.base.Broker.wake_version`: while it returns
            the number of the last read (not None), nothing was paused or resumed since, and the flags
            are not read again.
    """

    def __init__(
        self, store: Store, queues: tuple[str, ...], wake_version: Callable[[], int | None] = lambda: None
    ) -> None:
        self.store = store
        self.queues = queues
        self._serving = queues
        self._due = 0.0
        self._wake_version = wake_version
        self._read_at: int | None = None  # the wake version of the last good read

    def serving(self) -> tuple[str, ...]:
        """The queues not paused, in priority order (what it last read if the backend does not answer)."""
        now = time.monotonic()
        if now >= self._due:
            self._due = now + CHECK_EVERY
            version = self._wake_version()  # before the read: a change committed after it moves the version
            if version is not None and version == self._read_at:
                return self._serving
            try:
                stopped = paused(self.store, self.queues)
            except BrokerError:
                return self._serving
            serving = tuple(q for q in self.queues if q not in stopped)
            if serving != self._serving:
                self._log_change(serving)
            self._serving = serving
            self._read_at = version
        return self._serving

    def _log_change(self, serving: tuple[str, ...]) -> None:
        """One line per change this child saw: it no longer reserves from a queue, or does again."""
        stopped = [q for q in self._serving if q not in serving]
        started = [q for q in serving if q not in self._serving]
        if stopped:
            log.info("not reserving from paused queue(s) %s", ",".join(stopped))
        if started:
            log.info("reserving from resumed queue(s) %s again", ",".join(started))
