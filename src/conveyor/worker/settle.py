"""Settling: recording a finished task's result, then acknowledging its message.

The result always lands before the ack, so a crash in between runs the task again rather than
losing its result (at-least-once). How and when is one component, chosen by the pool:

- :class:`ImmediateSettler` writes the result and acks at once (one task per round trip);
- :class:`BatchSettler` keeps them pending; the pool takes them (:meth:`BatchSettler.take`), writes
  every result in one call and acks the batch with its next reservation. Until then the delivery
  stays leased and heartbeated.

A failure is settled as the middleware's verdict says (:meth:`Settler.failure`): a retry and a
dead letter at once whatever the pool (their record lands, then the message is sent again or
moved), a plain failure like a success. A task not run (:meth:`Settler.skip`) is settled at once.

Writes that record the outcome of a task that *ran* go through :meth:`Settler.durably`: retried
until the backend or broker answers, because leaving the delivery to its lease would count a
delivery and run the task again.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Collection
from typing import ClassVar, TypeVar

import msgspec

from conveyor.app import App
from conveyor.backends.base import ResultBackend
from conveyor.brokers import Delivery
from conveyor.errors import BrokerError
from conveyor.middleware import Bury, Defer, Job, Requeue, Verdict
from conveyor.results import entry, failed, read_record, retrying, skipped
from conveyor.states import ErrorInfo, State
from conveyor.worker.events import Ended
from conveyor.worker.outage import FIRST_BACKOFF, Outage, next_backoff

log = logging.getLogger("conveyor.worker")

T = TypeVar("T")

#: A final result ready for the backend: (task id, state, encoded record).
FinalResult = tuple[str, State, bytes]


class BackendDown(Exception):
    """The result backend failed *before* the task's function ran: give the delivery back uncounted.

    The pool nacks the delivery (no delivery counted, nothing ran) and takes no work until the
    backend answers again, instead of leaving the delivery to its lease.
    """


class GaveUp(Exception):
    """The task ran, but its outcome could not be recorded before the worker was told to stop.

    The caller gives the delivery back (it runs again later: at-least-once).
    """


@dataclasses.dataclass(slots=True)
class Pending:
    """Final results and acks not yet sent: the results must land before the acks."""

    results: list[FinalResult] = dataclasses.field(default_factory=list)
    acks: list[Delivery] = dataclasses.field(default_factory=list)

    def write_results(self, backend: ResultBackend, ttl: float) -> list[Delivery]:
        """Write the pending results, each fenced by its delivery's lease; drop and return the refused ones.

        The backend checks each lease in the write itself where it sees the broker's leases
        (:meth:`ResultBackend.set_held`): a write that left before a network cut and lands after the
        message was redelivered is refused then, which the worker's check before the write
        (``LeaseKeeper.fence``) cannot see. Those deliveries' acks would be refused too: they are dropped.
        """
        if not self.results:
            return []
        held = {d.id: d for d in self.acks}
        leases = [(d.queue, d.token) if (d := held.get(r[0])) is not None else ("", "") for r in self.results]
        return self.drop_lost(backend.set_held(self.results, ttl, leases))

    def drop_lost(self, lost: Collection[str]) -> list[Delivery]:
        """Remove the results and acks of the deliveries whose lease was lost (``LeaseKeeper.fence``); return those.

        Their messages were redelivered, so the run that holds the lease now records the outcome: a
        late result from this run must not replace its record (its ack would be refused anyway).
        """
        if not lost:
            return []
        dropped = [d for d in self.acks if d.id in lost]
        self.acks = [d for d in self.acks if d.id not in lost]
        self.results = [r for r in self.results if r[0] not in lost]
        for delivery in dropped:
            log.warning(
                "message %s finished after its lease was lost (redelivered elsewhere): its result and ack are "
                "dropped; the run holding the lease records the outcome",
                delivery.id,
            )
        return dropped


class Settler:
    """Records outcomes of tasks that ran. Safe to share between a child's threads.

    Args:
        app: the app whose broker and backend are written.
        stopping: tells whether the worker is stopping; an outcome that cannot be recorded
            (backend or broker down) is retried until it lands, or until this turns true.
    """

    #: True when :meth:`finish` only keeps the result and ack pending (no I/O until the pool settles).
    batched: ClassVar[bool] = False

    def __init__(self, app: App, stopping: Callable[[], bool] = lambda: False) -> None:
        self.app = app
        self._stopping = stopping
        #: The backend or the broker is down while an outcome waits to be recorded.
        self.outage = Outage("result backend or broker")

    def finish(self, delivery: Delivery, result: FinalResult | None) -> bool:
        """Store ``result`` (if any), then ack ``delivery``; True when both are kept pending."""
        raise NotImplementedError

    def store(self, result: FinalResult, delivery: Delivery | None = None) -> None:
        """Write one record of a task that ran, until it lands (see :meth:`durably`).

        With ``delivery``, the write is fenced by its lease where the backend sees the leases
        (:meth:`ResultBackend.set_held`): refused, with a warning, once the message was redelivered.
        """
        ttl = self.app.settings.result_ttl
        if delivery is None:
            task_id, state, data = result
            self.durably("result write", lambda: self.app.backend.set(task_id, state, data, ttl))
            return
        lease = [(delivery.queue, delivery.token)]
        if self.durably("result write", lambda: self.app.backend.set_held([result], ttl, lease)):
            log.warning(
                "message %s failed after its lease was lost (redelivered elsewhere): its %s record is refused",
                delivery.id,
                result[1],
            )

    def failure(self, job: Job, error: ErrorInfo, verdict: Verdict) -> tuple[Ended, bool]:
        """Record a failed attempt as ``verdict`` says; return how it ended and whether it waits in a batch.

        :class:`Requeue`: RETRY recorded, then the next attempt sent. :class:`Bury`: FAILURE
        recorded, then the message dead-lettered. Otherwise FAILURE recorded and acked like a
        success (pending with a batch). The record keeps every earlier attempt's error.
        """
        m = job.message
        state, earlier = self.durably("result read", lambda: read_record(self.app, m.id))
        if state is State.REVOKED:  # revoked while it ran: no retry, no dead letter; the REVOKED record stays
            log.warning("task %s[%s] failed after it was revoked: %s: %s", m.task, m.id, error.type, error.message)
            return Ended.REVOKED, self.finish(job.delivery, None)
        errors = [*earlier, error]
        if isinstance(verdict, Requeue):
            eta = time.time() + verdict.delay
            body = self.app.codec.encode(msgspec.structs.replace(m, attempt=m.attempt + 1, eta=eta))
            self.store(entry(m.id, retrying(job, errors, eta)), job.delivery)
            self.durably("retry", lambda: self.app.broker.nack(job.delivery, delay=verdict.delay, body=body))
            log.warning("task %s[%s] will retry in %.2fs %s", m.task, m.id, verdict.delay, verdict.reason)
            return Ended.RETRY, False
        ran = time.perf_counter() - job.started
        log.error("task %s[%s] failed in %.4fs: %s: %s", m.task, m.id, ran, error.type, error.message)
        record = entry(m.id, failed(job, errors))
        if isinstance(verdict, Bury):
            self.store(record, job.delivery)
            self.durably("dead-letter", lambda: self.app.broker.dead_letter(job.delivery, verdict.reason))
            return Ended.FAILURE, False
        return Ended.FAILURE, self.finish(job.delivery, record)

    def terminated(self, job: Job) -> tuple[Ended, bool]:
        """A running task was stopped by ``revoke(terminate=True)``: ack it (the REVOKED record is the revoker's)."""
        log.warning("task %s[%s] was revoked and terminated after %.4fs", job.message.task, job.id, job.elapsed())
        return Ended.REVOKED, self.finish(job.delivery, None)

    def reject(self, delivery: Delivery, reason: str, record: FinalResult | None = None) -> Ended:
        """Dead-letter a message that cannot run (undecodable, unsigned, an unknown task) with ``reason``.

        ``record`` (an unknown task's FAILURE) is written first, so its producer's ``get()`` raises
        instead of waiting on PENDING.

        Raises:
            BackendDown: the record could not be written (nothing ran: give the delivery back uncounted).
        """
        if record is not None:
            task_id, state, data = record
            try:
                self.app.backend.set(task_id, state, data, self.app.settings.result_ttl)
            except BrokerError as exc:
                raise BackendDown(str(exc)) from exc
        self.app.broker.dead_letter(delivery, reason)
        log.error("message %s dead-lettered: %s", delivery.id, reason)
        return Ended.DEAD

    def skip(self, job: Job, note: str) -> Ended:
        """Record a task that was not run (REVOKED, with ``note``) and ack it, at once.

        Raises:
            BackendDown: the record could not be written (nothing ran: give the delivery back uncounted).
        """
        task_id, state, data = entry(job.id, skipped(job, note))
        try:
            self.app.backend.set(task_id, state, data, self.app.settings.result_ttl)
        except BrokerError as exc:
            raise BackendDown(str(exc)) from exc
        self.app.broker.ack([job.delivery])
        log.info("task %s[%s] not run: %s", job.message.task, job.id, note)
        return Ended.REVOKED

    def defer(self, job: Job, defer: Defer) -> Ended:
        """Give a message back unrun, to run ``defer.delay`` seconds from now (uncounted, nothing recorded).

        Raises:
            BackendDown: the broker did not take it back (nothing ran: the delivery is given back later).
        """
        m = job.message
        body = None
        if defer.headers:
            body = self.app.codec.encode(msgspec.structs.replace(m, headers={**m.headers, **defer.headers}))
        try:
            self.app.broker.nack(job.delivery, delay=defer.delay, body=body)
        except BrokerError as exc:
            raise BackendDown(str(exc)) from exc
        log.debug("task %s[%s] deferred %.3fs: %s", m.task, m.id, defer.delay, defer.reason)
        return Ended.RETURNED

    def drop(self, job: Job, note: str, revoked: bool = False) -> Ended:
        """Ack a delivery that must not run, leaving its recorded result as it is.

        A redelivered copy of a finished task ends DUPLICATE; a task revoked after it was reserved
        (``revoked``) ends REVOKED.
        """
        self.app.broker.ack([job.delivery])
        log.info("task %s[%s] not run%s: %s", job.message.task, job.id, "" if revoked else " again", note)
        return Ended.REVOKED if revoked else Ended.DUPLICATE

    def durably(self, doing: str, step: Callable[[], T]) -> T:
        """Run a step that records the outcome of a task that ran, until the backend or broker answers.

        The task's side effect happened: leaving the delivery to its lease would count a delivery
        and run it again. Meanwhile the delivery stays held (and heartbeated) by the caller, which
        takes no new work. Raises GaveUp once the worker is stopping and the step still fails.
        """
        backoff = FIRST_BACKOFF
        while True:
            try:
                result = step()
            except BrokerError as exc:
                self.outage.failed(exc, doing)
                if self._stopping():
                    raise GaveUp(f"{doing} failed while stopping: {exc}") from exc
                time.sleep(backoff)
                backoff = next_backoff(backoff)
                continue
            self.outage.answered()
            return result


class ImmediateSettler(Settler):
    """Writes the result and acks the message as soon as the task ends."""

    def finish(self, delivery: Delivery, result: FinalResult | None) -> bool:
        if result is not None:
            self.store(result, delivery)
        self.durably("ack", lambda: self.app.broker.ack([delivery]))
        return False


class BatchSettler(Settler):
    """Keeps results and acks pending until the pool settles them in one round trip each."""

    batched: ClassVar[bool] = True

    def __init__(self, app: App, stopping: Callable[[], bool] = lambda: False) -> None:
        super().__init__(app, stopping)
        self._pending = Pending()
        self._lock = threading.Lock()

    def finish(self, delivery: Delivery, result: FinalResult | None) -> bool:
        with self._lock:
            if result is not None:
                self._pending.results.append(result)
            self._pending.acks.append(delivery)
        return True

    def take(self) -> Pending:
        """Hand over the pending results and acks (and forget them): write the results, then ack.

        Safe from any thread: results and acks are taken together, so whoever acks a delivery
        also writes its result first.
        """
        with self._lock:
            pending, self._pending = self._pending, Pending()
        return pending

    def restore(self, pending: Pending) -> None:
        """Put back what :meth:`take` handed over and could not be settled (ahead of newer ones)."""
        with self._lock:
            self._pending.results[:0] = pending.results
            self._pending.acks[:0] = pending.acks
