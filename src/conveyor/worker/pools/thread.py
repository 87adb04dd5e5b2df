"""The thread pool: one child process, ``-c`` threads sharing one reserver. For I/O-bound tasks.

The child's main thread is the reserver; the slots are long-lived threads::

    reserver ── settle what finished + reserve up to the free slots (one round trip) ──► ready queue
       ▲                                                                                   │ one per free thread
       └──────── a slot frees (event) ◄── thread: run, leave result + ack in the BatchSettler ◄┘

Per task a thread pays no pipe message (finished tasks are counted in bulk; a start is reported
only for a hard time limit, at once, or for a task running past ``LONG_TASK``), no round trip
of its own (results land in one ``set_many`` and acks ride on the next reservation), and one
hand-off through a C queue.

The reserver keeps a margin of deliveries ready beyond the free slots (``MARGIN``) and tops it up
once it runs low (``REFILL_AT``), also while every thread runs a task, as long as threads keep
taking them: a thread that ends a task takes the next one at once, never waiting for a round trip,
and the reserver wakes once per few tasks, not once per task. Ready deliveries must not wait behind
long tasks (no prefetch starvation): when no thread took one for ``READY_HOLD`` (every slot busy),
the ready ones go back to the queue at once, where idle workers take them, and the reserver keeps
no margin until a thread ends a task.

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
#: Top the margin up once no more than this fraction of it is ready (threads keep taking the rest
#: while the round trip is under way).
REFILL_AT = 0.5
#: Seconds the ready deliveries wait, while every thread runs a task and none takes one, before they go
#: back to the queue. Longer than the process pool's PREFETCH_HOLD (a single task that runs past it is
#: long): many threads running tasks of tens of ms that started together end together, so a lull of a
#: few ms between ends is their normal rhythm, not a sign of long tasks; giving the margin back then
#: costs a round trip per delivery and leaves threads idle until the next reservation lands.
READY_HOLD = 0.05
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
        self._wake = threading.Event()  # a thread ended a task and the ready ones ran low: reserve again
        self._margin = int(slots * MARGIN)
        self._refill_at = int(self._margin * REFILL_AT)
        self._margin_on = True  # off once ready deliveries went back unstarted, until a thread ends a task
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
            if self._wake.is_set():  # a thread ended a task (threads take ready ones again)
                self._wake.clear()
                self._margin_on = True
            ready = self._ready.qsize()
            want = slots + (self._margin if self._margin_on else 0) - self._outstanding
            if want <= 0 or not (self._outstanding - ready < slots or self._refill(ready)):
                self._wait_for_a_slot(ready)
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

    def _refill(self, ready: int) -> bool:
        """Every thread runs a task: top the margin up only once it ran low and while threads take from it.

        A task queued while every thread runs long tasks stays revocable in the queue, where a worker with
        an idle thread takes it; and such a pool sends no reservation until a thread ends a task.
        """
        return self._margin_on and ready <= self._refill_at and time.monotonic() - self._last_take < READY_HOLD

    def _wait_for_a_slot(self, ready: int) -> None:
        """Every slot is busy: wait for a thread to end a task; give the ready ones back if none takes one in time."""
        if not ready:
            self._wake.wait(LOOK_EVERY)
            return
        if not self._wake.wait(READY_HOLD) and time.monotonic() - self._last_take >= READY_HOLD:
            self._margin_on = False  # until a thread ends a task: else the same deliveries come straight back
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
            self._wake.wait(LOOK_EVERY)
            self._wake.clear()
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
        # Wake the reserver only when the ready ones ran low (it clears the event before it looks at them).
        if self._ready.qsize() <= self._refill_at and not self._wake.is_set():
            self._wake.set()
        if outcome is None:
            return
        if not outcome.deferred:
            self.child.keeper.release(delivery)
        self.child.ended(outcome, reported)


POOL = ThreadPool
