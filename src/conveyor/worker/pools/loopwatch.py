"""LoopWatch: the asyncio pool's guard against a coroutine that blocks the event loop.

Cancelling is how the asyncio pool stops a task at its hard time limit, and cancelling needs the
loop: a coroutine that blocks it (``time.sleep`` in an ``async def``, a CPU-bound loop) cannot be
cancelled. This thread is the last resort for that case only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from typing import TYPE_CHECKING, Any

from conveyor.brokers import Delivery
from conveyor.errors import BrokerError
from conveyor.message import Message
from conveyor.results import past_hard_limit
from conveyor.states import encode_record
from conveyor.task import BaseTask

if TYPE_CHECKING:
    from conveyor.worker.pools.asyncio import AsyncioChild

log = logging.getLogger("conveyor.worker")

#: Seconds the loop may go without a tick, a hard time limit passed, before the child is taken down.
STUCK_AFTER = 2.0


class LoopWatch:
    """A thread that takes the child down when its loop is stuck past a task's hard time limit.

    A coroutine that blocks the loop (``time.sleep`` in an ``async def``) cannot be cancelled: the
    loop never gets back to cancel it. Once a hard limit has passed and the loop has not ticked for
    ``STUCK_AFTER`` seconds, the watch records the overdue tasks FAILURE (TimeLimitExceeded), acks them,
    and kills the child; the supervisor returns the other running tasks to the queue and starts a new child.
    """

    def __init__(self, child: AsyncioChild) -> None:
        self.child = child
        self._tick = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="conveyor-loop-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def tick(self) -> None:
        """The loop is alive (called from the loop every ``COUNTS_EVERY`` seconds)."""
        self._tick = time.monotonic()

    def _watch(self) -> None:
        while not self._stop.wait(STUCK_AFTER / 4):
            now = time.monotonic()
            if now - self._tick < STUCK_AFTER:
                continue
            overdue = [entry for entry in list(self.child._deadlines.values()) if entry[3] + STUCK_AFTER <= now]
            if overdue:
                self._fail_and_die(overdue)

    def _fail_and_die(self, overdue: list[tuple[Delivery, Message, BaseTask[Any, Any], float]]) -> None:
        executor = self.child.executor
        for delivery, message, task, _ in overdue:
            log.error(
                "task %s[%s] blocks the event loop past its hard time limit; replacing the child",
                message.task,
                message.id,
            )
            with contextlib.suppress(BrokerError):  # else it returns with the child's other tasks, and runs again
                record = past_hard_limit(message.task, message.attempt, executor.worker, task.options.time_limit)
                app = executor.app
                app.backend.set(message.id, record.state, encode_record(record), app.settings.result_ttl)
                app.broker.ack([delivery])
        os.kill(os.getpid(), signal.SIGKILL)
