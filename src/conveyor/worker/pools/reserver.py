"""Reserver: settles finished tasks and reserves the next ones in one round trip, for every pool.

    finished tasks ──► BatchSettler (pending results + acks, deliveries still held)
                          │ take()
                          ▼
    backend.set_held(results)  ──►  broker.ack_and_reserve(acks, free slots)  ──►  fresh deliveries, held

The result always lands before the ack (at-least-once): if the write fails, results and acks go
back to the settler and stay held (heartbeated); if the ack fails, the acks go back. Either way
the next round trip retries them, with a capped backoff and one log line per outage: a task
that ran is never left to its lease (that would count a delivery and run it again). A finished task
whose lease was lost meanwhile (a network cut longer than the lease: it ran again elsewhere) is
dropped before the write (``LeaseKeeper.fence``), and a write that left before the cut and lands after
it is refused by the backend where it sees the leases (``ResultBackend.set_held``): its late result
never replaces the record of the run holding the lease.
"""

from __future__ import annotations

import logging
import time

from conveyor.brokers import Delivery
from conveyor.errors import BrokerError
from conveyor.pausing import CHECK_EVERY
from conveyor.worker.child import Child
from conveyor.worker.outage import FIRST_BACKOFF, Outage, next_backoff
from conveyor.worker.settle import BatchSettler, Pending

log = logging.getLogger("conveyor.worker")


class Reserver:
    """One child's round trips: results, then acks and the next reservation.

    Safe to call from one thread at a time (the pool's loop); tasks finish into the settler from any thread.

    Args:
        child: the child whose broker, backend, lease keeper and queues are used.
        settler: where the pool's executor leaves finished tasks.
    """

    def __init__(self, child: Child, settler: BatchSettler) -> None:
        self.child = child
        self.settler = settler
        self._outage = Outage("result backend or broker")
        self._backoff = FIRST_BACKOFF

    def round_trip(self, n: int, timeout: float) -> list[Delivery]:
        """Settle what finished and reserve up to ``n`` deliveries (held), waiting up to ``timeout`` for work.

        On an outage, logs it once, sleeps the current backoff and returns nothing: the finished
        tasks stay pending and held, and the next call retries them.
        """
        try:
            fresh = self._settle_and_reserve(n, timeout)
        except BrokerError as exc:
            self._outage.failed(exc, "settling finished tasks")
            time.sleep(self._backoff)
            self._backoff = next_backoff(self._backoff)
            return []
        self._outage.answered()
        self._backoff = FIRST_BACKOFF
        return fresh

    def settle(self) -> None:
        """Write the pending results and ack their tasks now, reserving nothing (outside the batch rhythm).

        Raises:
            BrokerError: the backend or broker failed; what was taken is pending again.
        """
        self._settle_and_reserve(0, 0.0)

    def settle_or_give_back(self) -> None:
        """Settle before the child exits; if that fails, give the finished tasks back: they run again later."""
        try:
            self.settle()
        except BrokerError as exc:
            pending = self.settler.take()
            if pending.acks:
                log.warning(
                    "stopping while the result backend or broker is down (%s): %d finished task(s) go back to "
                    "the queue and will run again",
                    exc,
                    len(pending.acks),
                )
                self.child.return_unstarted(pending.acks)

    def _settle_and_reserve(self, n: int, timeout: float) -> list[Delivery]:
        pending = self.settler.take()
        child = self.child
        try:  # fencing: a run whose lease was lost meanwhile (a network cut) records nothing
            child.keeper.release_all(pending.drop_lost(child.keeper.fence(pending.acks)))
        except BrokerError:
            self.settler.restore(pending)
            raise
        if pending.results:
            try:  # each write fenced on the server too, where the backend sees the leases (ResultBackend.set_held)
                child.keeper.release_all(pending.write_results(child.app.backend, child.app.settings.result_ttl))
            except BrokerError:
                self.settler.restore(pending)
                raise
        acks = pending.acks
        child.keeper.acking(acks)
        config = child.config
        queues = child.paused.serving() if n > 0 else ()
        reserved_at = time.monotonic()
        try:
            if not queues:
                if acks:
                    child.app.broker.ack(acks)
                fresh = []
                if n > 0:  # every queue it serves is paused: wait as a reserve with nothing ready would
                    time.sleep(min(timeout, CHECK_EVERY))
            else:
                fresh = child.app.broker.ack_and_reserve(
                    acks, queues, n, owner=child.owner, lease=config.lease, timeout=timeout
                )
        except BrokerError:
            self.settler.restore(Pending(acks=acks))  # their results landed; the acks are retried
            raise
        child.keeper.release_all(acks)
        child.keeper.hold_all(fresh, since=reserved_at)
        child.notes.received(fresh)
        return fresh
