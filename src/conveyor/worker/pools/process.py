"""The process pool: one slot per child process, prefetching a batch and settling it in one round trip.

    reserve up to ``prefetch`` ─► run them one by one (results and acks kept pending)
        ▲                                                   │ backlog empty
        └── write pending results, then ack + reserve in one round trip ◄┘

A task running longer than ``PREFETCH_HOLD`` (not counting its waits for a CPU) gets its unstarted
batch-mates returned to the queue at once (no starvation), its pending results written and acked,
and its start reported to the supervisor (terminate-revocation); a task with a hard ``time_limit``
reports its start at once. Each task runs in the child's main thread, so a soft time limit
interrupts even a blocking call, a hard one or a crash costs only this one slot, and CPU-bound
tasks use every core.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from conveyor.brokers import Delivery
from conveyor.errors import BrokerError
from conveyor.message import Message
from conveyor.task import BaseTask
from conveyor.worker.backlog import PREFETCH_HOLD, Backlog, BatchSize
from conveyor.worker.child import RESERVE_WAIT, Child
from conveyor.worker.pools import Pool
from conveyor.worker.pools.reserver import Reserver
from conveyor.worker.settle import BatchSettler

#: The child's one slot on its board.
_SLOT = 0


class ProcessPool(Pool):
    """One slot in the child's main thread, fed from a prefetched :class:`Backlog`."""

    name = "process"

    @classmethod
    def layout(cls, concurrency: int) -> tuple[int, int]:
        return concurrency, 1

    def __init__(self, child: Child) -> None:
        super().__init__(child)
        self.settler = BatchSettler(child.app, lambda: child.stopping)
        self.executor = child.executor(self.settler, self._on_start)
        self.reserver = Reserver(child, self.settler)
        self.backlog = Backlog(PREFETCH_HOLD, self._on_long_task)
        self.batch = BatchSize(child.config.prefetch)
        # The running task's start report: sent at once for a hard limit, else only once it runs long
        # (then made from what the task started with: most tasks never need one).
        self._report_lock = threading.Lock()
        self._start_event: tuple[Delivery, Message, BaseTask[Any, Any]] | None = None
        self._start_sent = False
        self._task_is_long = False  # the watch found the running task past PREFETCH_HOLD
        # The last reservation was not a full batch: the next one may wait for work, so counts and events
        # go first (a worker taking full batches is saturated and reports every COUNTS_EVERY instead).
        self._draining = True

    def serve(self) -> None:
        self.backlog.start()
        try:
            self._loop()
        finally:
            self.backlog.stop()
            self.child.return_unstarted(self.backlog.take_unstarted())
            self.reserver.settle_or_give_back()
            self.executor.close()

    def _loop(self) -> None:
        child, backlog = self.child, self.backlog
        # ``stopping`` (an attribute) between tasks; ``serving`` (a getppid() system call) before each reservation
        # only: a supervisor that dies kills its child (PR_SET_PDEATHSIG), so the call only catches an orphan
        # from the start, which has nothing prefetched yet.
        ran, filled = 0, time.monotonic()  # tasks of the current batch run here; when it was reserved
        while not child.stopping:
            if child.backend_down:  # give back what did not start, take nothing until the backend answers
                child.return_unstarted(backlog.take_unstarted())
                child.wait_for_backend()
                continue
            delivery = backlog.next()
            if delivery is not None:
                self._run(delivery)
                ran += 1
                continue
            if not child.serving:
                break
            self.batch.ran(ran, time.monotonic() - filled)
            child.flush_counts(force=self._draining)  # before a reserve that may wait: events stay fresh
            n = self.batch.next
            fresh = self.reserver.round_trip(n, RESERVE_WAIT)
            ran, filled = 0, time.monotonic()
            self._draining = len(fresh) < n
            backlog.fill(fresh)
            child.flush_counts()

    def _run(self, delivery: Delivery) -> None:
        try:
            outcome = self.child.execute(self.executor, _SLOT, delivery)
        finally:
            self.backlog.finished()
        if not outcome.deferred:
            self.child.keeper.release(delivery)
        with self._report_lock:
            reported, self._start_event, self._start_sent = self._start_sent, None, False
            self._task_is_long = False
        self.child.ended(outcome, reported)

    def _on_start(self, delivery: Delivery, message: Message, task: BaseTask[Any, Any]) -> None:
        with self._report_lock:
            # The supervisor must know the deadline of a hard time limit from the start; a task the
            # watch already found long (slow to decode or to record STARTED) reports at once too.
            if task.options.time_limit is not None or self._task_is_long:
                self.child.send(self.child.started(delivery, message, task))
                self._start_sent = True
            else:
                self._start_event = (delivery, message, task)

    def _on_long_task(self) -> None:
        """The running task passed PREFETCH_HOLD: free its batch-mates, settle, report its start."""
        with self._report_lock:
            self._task_is_long = True  # if the task has not reached its start yet, it reports it at once
            if self._start_event is not None and not self._start_sent:
                self.child.send(self.child.started(*self._start_event))  # no hard limit: no deadline to date
                self._start_sent = True
        self.child.return_unstarted(self.backlog.take_unstarted())
        with contextlib.suppress(BrokerError):  # they stay pending and held; the main loop retries and logs
            self.reserver.settle()


POOL = ProcessPool
