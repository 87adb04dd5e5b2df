"""The thread pool: one child process, ``-c`` threads sharing one reserver. For I/O-bound tasks.

The child's main thread is the reserver; the slots are long-lived threads::

    reserver ── settle what finished + reserve up to the free slots (one round trip) ──► ready queue
       ▲                                                                                   │ one per free thread
       └──────── a slot frees (event) ◄── thread: run, leave result + ack in the BatchSettler ◄┘

Per task a thread pays no pipe message (finished tasks are counted in bulk; a start is reported
only for a hard time limit, at once, or for a task running past ``LONG_TASK``), no round trip
of its own (results land in one ``set_many`` and acks ride on the next reservation), and one
hand-off through a C queue.

The reserver keeps a few deliveries ready beyond the free slots (``MARGIN``), so a thread that
ends a task takes the next one at once instead of waiting for a round trip; it reserves nothing
while every thread runs a task (a task queued meanwhile stays in the queue). Those must not wait
behind long tasks (no prefetch starvation): when no thread took a ready delivery for
``PREFETCH_HOLD`` (every slot busy), the ready ones go back to the queue at once, where idle
workers take them, and the reserver keeps no margin until a slot frees.

What threads share has a cost: a task that crashes the process, a hard time limit, or
``revoke(terminate=True)`` kills the child, and every task it was running goes back to the
queue to run again (counted as a delivery); a soft time limit reaches a thread blocked in C
only when the call returns (worker/timelimits.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import threading
import time
from typing import Any

from conveyor.brokers import Delivery
from conveyor.errors import BrokerError
from conveyor.message import Message
from conveyor.task import BaseTask
from conveyor.worker.backlog import PREFETCH_HOLD
from conveyor.worker.child import RESERVE_WAIT, Child
from conveyor.worker.executor import Outcome
from conveyor.worker.pools import Pool
from conveyor.worker.pools.reserver import Reserver
from conveyor.worker.settle import BatchSettler

#: Seconds a task runs before its start is reported to the supervisor (which looks for
#: ``revoke(terminate=True)`` every second and names running tasks when a child dies).
LONG_TASK = 0.5
#: Seconds between looks for long tasks, and the longest the reserver sleeps while every slot is busy.
LOOK_EVERY = 0.1
#: Deliveries kept ready beyond the free slots, as a fraction of the slots (none below 4 slots: a
#: one-slot worker's ready task would sit reserved behind the running one, where revoke cannot reach it).
MARGIN = 0.25
#: Seconds a reservation waits for work while tasks run: results of tasks that end meanwhile wait
#: at most about this long to be written.
SETTLE_WAIT = 0.05


@dataclasses.dataclass(slots=True)
class _Slot:
    """What the reserver knows of one thread's running task.

    ``begun`` is written by the slot's thread in one assignment (atomic under the GIL) when its
    task starts; ``reported`` is read and written under the pool's lock, so a task's end is never
    reported before its start.
    """

    begun: tuple[float, Delivery, Message, BaseTask[Any, Any]] | None = None
    reported: bool = False  # its start was sent: its end is reported too


class ThreadPool(Pool):
    """``config.slots`` threads in one child, fed by the main thread's :class:`Reserver`."""

    name = "thread"

    @classmethod
    def layout(cls, concurrency: int) -> tuple[int, int]:
        return 1, concurrency

    def __init__(self, child: Child) -> None:
        super().__init__(child)
        self.settler = BatchSettler(child.app, lambda: child.stopping)
        self.executor = child.executor(self.settler, self._on_start)
        self.reserver = Reserver(child, self.settler)
        slots = child.config.slots
        self._ready: queue.SimpleQueue[Delivery | None] = queue.SimpleQueue()
        self._slots = [_Slot() for _ in range(slots)]
        self._lock = threading.Lock()
        self._outstanding = 0  # reserved and not ended: waiting in the ready queue or running
        self._freed = threading.Event()  # a slot freed: the reserver may reserve again
        self._margin = int(slots * MARGIN)
        self._margin_on = True  # off once ready deliveries went back unstarted, until a slot frees
        self._last_take = 0.0  # monotonic time a thread last took a ready delivery
        self._local = threading.local()
        self._next_look = 0.0
        self._threads = [
            threading.Thread(target=self._work, args=(slot,), name=f"conveyor-slot-{slot}", daemon=True)
            for slot in range(slots)
        ]

    def serve(self) -> None:
        for thread in self._threads:
            thread.start()
        try:
            self._loop()
        finally:
            self._wind_down()

    # -- the reserver (the child's main thread) ------------------------------------------------

    def _loop(self) -> None:
        child, slots = self.child, self.child.config.slots
        while child.serving:
            if child.backend_down:  # give back what did not start, take nothing until the backend answers
                self._return_queued()
                child.wait_for_backend()
                continue
            self._report_long_tasks()
            if self._freed.is_set():
                self._freed.clear()
                self._margin_on = True
            # No reservation while every thread runs a task: a task queued now stays revocable in the
            # queue, and an idle worker takes it.
            busy = self._outstanding - self._ready.qsize() >= slots
            want = 0 if busy else slots + (self._margin if self._margin_on else 0) - self._outstanding
            if want <= 0:
                self._wait_for_a_slot()
                continue
            # While tasks run, a short wait: the results of those that end meanwhile are written soon.
            if self._outstanding == 0:  # idle: the reserve may wait for work, so counts and events go first
                child.flush_counts(force=True)
            fresh = self.reserver.round_trip(want, RESERVE_WAIT if self._outstanding == 0 else SETTLE_WAIT)
            with self._lock:
                self._outstanding += len(fresh)
            for delivery in fresh:
                self._ready.put(delivery)
            child.flush_counts()

    def _wait_for_a_slot(self) -> None:
        """Every slot is busy: wait for one to free; give the ready deliveries back if none frees in time."""
        if self._ready.empty():
            self._freed.wait(LOOK_EVERY)
            return
        if not self._freed.wait(PREFETCH_HOLD) and time.monotonic() - self._last_take >= PREFETCH_HOLD:
            self._margin_on = False  # until a slot frees: else the same deliveries come straight back
            self._return_queued()

    def _report_long_tasks(self) -> None:
        """Send the start of each task running past LONG_TASK (under the lock: its end cannot overtake it)."""
        now = time.monotonic()
        if now < self._next_look:
            return
        self._next_look = now + LOOK_EVERY
        with self._lock:
            for slot in self._slots:
                begun = slot.begun
                if begun is not None and not slot.reported and now - begun[0] >= LONG_TASK:
                    self.child.send(self.child.started(*begun[1:]))
                    slot.reported = True

    def _return_queued(self) -> None:
        """Give back every reserved delivery no thread has taken yet."""
        taken: list[Delivery] = []
        with contextlib.suppress(queue.Empty):
            while (delivery := self._ready.get_nowait()) is not None:
                taken.append(delivery)
        with self._lock:
            self._outstanding -= len(taken)
        self.child.return_unstarted(taken)

    def _wind_down(self) -> None:
        """Return what no thread took, let running tasks finish (settling as they do), settle the rest."""
        self._return_queued()
        for _ in self._threads:
            self._ready.put(None)
        while any(thread.is_alive() for thread in self._threads):
            self._freed.wait(LOOK_EVERY)
            self._freed.clear()
            self._report_long_tasks()
            with contextlib.suppress(BrokerError):  # retried on the next pass, and at the end
                self.reserver.settle()
        self.reserver.settle_or_give_back()
        self.executor.close()

    # -- the slots (one thread each) -------------------------------------------------------------

    def _work(self, slot: int) -> None:
        self._local.slot = slot
        child = self.child
        while (delivery := self._ready.get()) is not None:
            self._last_take = time.monotonic()
            if child.stopping or child.backend_down:  # reserved but not started: back to the queue at once
                child.return_unstarted([delivery])
                self._end(slot, delivery, None)
            else:
                self._end(slot, delivery, child.execute(self.executor, slot, delivery))

    def _on_start(self, delivery: Delivery, message: Message, task: BaseTask[Any, Any]) -> None:
        state = self._slots[self._local.slot]
        if task.options.time_limit is not None:  # the supervisor must know the deadline from the start
            self.child.send(self.child.started(delivery, message, task))
            with self._lock:
                state.reported = True
            return
        state.begun = (time.monotonic(), delivery, message, task)

    def _end(self, slot: int, delivery: Delivery, outcome: Outcome | None) -> None:
        state = self._slots[slot]
        with self._lock:
            reported, state.begun, state.reported = state.reported, None, False
            self._outstanding -= 1
        if not self._freed.is_set():  # the reserver clears it before it looks at the free slots
            self._freed.set()
        if outcome is None:
            return
        if not outcome.deferred:
            self.child.keeper.release(delivery)
        self.child.ended(outcome, reported)


POOL = ThreadPool
