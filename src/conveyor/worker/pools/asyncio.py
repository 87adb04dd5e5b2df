"""The asyncio pool: one child process, one event loop, up to ``slots`` task coroutines at once.

``conveyor worker APP --pool asyncio -c 1000`` runs a single child whose loop awaits up to a
thousand tasks together (the I/O-bound work conveyor exists for: LLM calls, HTTP fan-out). The
loop never waits on the network itself: every blocking call runs on a few I/O threads.

    reserver ── reserve ≤ free slots (one round trip per batch) ──► one coroutine per delivery
                                                                        │ Executor.arun
    settler ◄── finished: results written together, then acked together ◄┘  (BatchSettler)

- Leases: a :class:`LeaseKeeper` thread heartbeats every held delivery, and the board's slots
  (one per coroutine) tell the broker which run; a ``kill -9`` of the child counts a delivery only
  against them.
- Soft ``soft_time_limit``: the coroutine is cancelled at the limit and the task fails with
  TimeLimitExceeded (retried if its policy says so). Hard ``time_limit``: the coroutine is cancelled
  and the task recorded FAILURE; its 999 siblings run on. Only a loop that is itself stuck (a
  coroutine blocking it) past a hard limit takes the child down (:class:`LoopWatch`).
- ``revoke(terminate=True)``: every ``REVOCATION_CHECK`` seconds the child reads the records of the
  tasks that have run that long and cancels the revoked ones (the supervisor does not kill this child).
- A sync task runs on a thread of its own pool (``slots`` threads at most, started on demand).
- SIGTERM: stop reserving, return what did not start, let running coroutines finish (the
  supervisor stops the child hard after ``shutdown_grace``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import FrameType
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from conveyor.brokers import Delivery
from conveyor.errors import BrokerError
from conveyor.message import Message
from conveyor.pausing import CHECK_EVERY
from conveyor.states import State, decode_record
from conveyor.task import BaseTask
from conveyor.worker.childlimits import memory_reason
from conveyor.worker.events import ChildEvent, Counts, Ended, Retiring, TaskRunning
from conveyor.worker.executor import BackendDown, Executor, Outcome
from conveyor.worker.outage import FIRST_BACKOFF, Outage, next_backoff
from conveyor.worker.pools import Pool
from conveyor.worker.pools.loopwatch import LoopWatch
from conveyor.worker.settle import BatchSettler, GaveUp, Pending

if TYPE_CHECKING:
    from conveyor.worker.child import Child

log = logging.getLogger("conveyor.worker")

T = TypeVar("T")

#: Threads for the blocking broker and backend calls (reserve, STARTED, results, acks): the loop never blocks on them.
IO_THREADS = 4
#: Seconds a reserve call waits for work before the child checks whether it should stop.
RESERVE_WAIT = 1.0
#: Most deliveries reserved in one round trip (a Redis script runs atomically: keep each one short).
RESERVE_BATCH = 256
#: Seconds between looks for running tasks revoked with terminate=True; a task is looked at once it ran this long.
REVOCATION_CHECK = 1.0
#: Seconds between the counts of finished tasks sent to the supervisor.
COUNTS_EVERY = 0.5
#: Seconds a task runs before its start goes to the event log (as on the thread pool; a hard time limit: at once).
LONG_TASK = 0.5
#: The id read to find out whether the result backend answers again.
_PROBE_ID = "conveyor-backend-probe"


class AsyncioChild:
    """The loop of an asyncio-pool child. ``run()`` serves until stopped or orphaned.

    Args:
        child: the child process it serves (its config, board, lease keeper and pipe; ``config.slots``
            coroutines at once, one board slot each).
    """

    def __init__(self, child: Child) -> None:
        self.child = child
        self.app = app = child.app
        self.config = config = child.config
        self.board = child.board
        self.owner = child.owner
        self.keeper = child.keeper
        self.settler = BatchSettler(app, lambda: self.stopping)
        self.executor = Executor(app, config.worker_id, self.settler, on_start=self._on_start)
        self.calls: dict[str, asyncio.Future[Any]] = {}  # running calls by delivery id (terminate cancels them)
        self._started: dict[str, float] = {}  # monotonic start of each running call
        self._reserved_at = 0.0  # monotonic time before the last reserve (the leases it took run from after it)
        # Running tasks whose start is not in the event log yet: monotonic start, task, queue (only when observed)
        self._unreported: dict[str, tuple[float, str, str]] = {}
        self._sync_started: dict[str, BaseTask[Any, Any]] = {}  # running sync tasks: each holds a thread
        self._deadlines: dict[str, tuple[Delivery, Message, BaseTask[Any, Any], float]] = {}
        self._free_slots = list(range(config.slots - 1, -1, -1))
        self._slots: dict[str, int] = {}  # board slot of each delivery being run
        self._running: set[asyncio.Task[None]] = set()
        self._io = ThreadPoolExecutor(IO_THREADS, "conveyor-io")
        self._sync_threads: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._finished: asyncio.Event | None = None
        self._closing = False
        self._counts = [0, 0]
        self._tasks_started = 0
        self._backend_down = False
        self._backend = Outage("result backend")
        self._settling = Outage("result backend or broker")
        self.watch = LoopWatch(self)

    @property
    def stopping(self) -> bool:
        """The child was told to stop (SIGTERM, a per-child limit, its supervisor gone)."""
        return self.child.stopping

    def request_stop(self, signum: int = 0, frame: FrameType | None = None) -> None:
        """Stop reserving; let running coroutines finish (the SIGTERM handler)."""
        self.child.request_stop()
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def run(self) -> None:
        """Serve until asked to stop or orphaned, then wind down (the child then stops its keeper, closes the app)."""
        self.executor.start()  # the middleware's on_child_start hooks (executor.close() runs on_child_stop)
        try:
            asyncio.run(self._main())
        finally:
            self.executor.close()
            self.watch.stop()
            self._io.shutdown(wait=True)  # no broker call cut by the connections' close
            if self._sync_threads is not None:
                self._sync_threads.shutdown(wait=False)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.set_default_executor(self._io)  # Executor.arun offloads with asyncio.to_thread
        self._wake, self._finished = asyncio.Event(), asyncio.Event()
        self.watch.start()
        settling = asyncio.create_task(self._settle_loop())
        ticking = asyncio.create_task(self._tick_loop())
        try:
            await self._reserve_loop()
            while self._running:  # graceful stop: running coroutines finish (the supervisor bounds the wait)
                await asyncio.wait(set(self._running), timeout=RESERVE_WAIT)
        finally:
            ticking.cancel()
            self._closing = True  # the settler ends its round (never cancelled mid-write), then returns
            self._finished.set()
            await settling
            await self._settle_last()

    # -- reserving --------------------------------------------------------------------------

    async def _reserve_loop(self) -> None:
        assert self._wake is not None
        backoff = FIRST_BACKOFF
        while not self._should_stop():
            if self._backend_down:
                await self._wait_for_backend()
                continue
            if not self._free_slots:
                self._wake.clear()
                await self._wake.wait()
                continue
            free = min(len(self._free_slots), RESERVE_BATCH, self._tasks_left())
            try:
                fresh = await self._offload(self._reserve, free)
            except BrokerError as exc:
                log.warning("broker unavailable, retrying in %.1fs: %s", backoff, exc)
                await asyncio.sleep(backoff)
                backoff = next_backoff(backoff)
                continue
            backoff = FIRST_BACKOFF
            self._start_all(fresh)

    def _reserve(self, n: int) -> list[Delivery]:
        config = self.config
        queues = self.child.paused.serving()
        if not queues:  # every queue it serves is paused
            time.sleep(min(RESERVE_WAIT, CHECK_EVERY))
            return []
        self._reserved_at = time.monotonic()  # the leases of what it returns run from after this
        fresh = self.app.broker.reserve(queues, n, owner=self.owner, lease=config.lease, timeout=RESERVE_WAIT)
        self.child.notes.received(fresh)
        return fresh

    def _start_all(self, deliveries: list[Delivery]) -> None:
        for position, delivery in enumerate(deliveries):
            if self.stopping or self._backend_down:  # reserved but not started: back to the queue at once
                self._io.submit(self._return_unstarted, deliveries[position:])
                return
            self.keeper.hold(delivery, since=self._reserved_at)
            task = asyncio.create_task(self._run_one(delivery, self._free_slots.pop()))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
            self._tasks_started += 1
        if self._tasks_left() == 0:  # it finishes what it started, then the supervisor replaces it
            self._retire(f"ran {self._tasks_started} tasks (max_tasks_per_child)")  # once those it started end

    def _tasks_left(self) -> int:
        """How many more tasks this child may start (``max_tasks_per_child`` counts started tasks here)."""
        limit = self.app.settings.max_tasks_per_child
        return RESERVE_BATCH if limit is None else max(0, limit - self._tasks_started)

    def _should_stop(self) -> bool:
        if not self.child.serving and not self.stopping:
            log.warning("the supervisor is gone; stopping")
            self.child.request_stop()
        return not self.child.serving

    # -- running ----------------------------------------------------------------------------

    async def _run_one(self, delivery: Delivery, slot: int) -> None:
        self._slots[delivery.id] = slot  # marked running on the board once its function starts (_on_start)
        outcome: Outcome | None = None
        try:
            outcome = await self.executor.arun(delivery, self.calls, self._threads_for_sync)
        except BackendDown as exc:  # nothing ran: back to the queue uncounted, and pause
            self._backend.failed(exc, "before a task started")
            self._backend_down = True
            await self._offload(self._return_unstarted, [delivery])
        except GaveUp as exc:  # it ran; its outcome could not be recorded before the stop
            log.warning(
                "task %s ran but its outcome was not recorded (%s); it goes back to run again", delivery.id, exc
            )
            await self._offload(self._return_unstarted, [delivery])
        except Exception:
            # The broker or backend failed mid-way; the lease expires and the task runs again.
            log.exception("could not finish message %s; it will be redelivered", delivery.id)
            self.keeper.release(delivery)
        finally:
            del self._slots[delivery.id]
            self._started.pop(delivery.id, None)
            self._unreported.pop(delivery.id, None)
            self._let_go_of_stuck_thread(delivery.id, outcome)
            self._deadlines.pop(delivery.id, None)
            self.board.idle(slot)
            self._free_slots.append(slot)
            assert self._wake is not None and self._finished is not None
            self._wake.set()
        if outcome is None:
            return
        if outcome.deferred:
            self._finished.set()
        else:
            self.keeper.release(delivery)
        self._count(outcome)

    def _let_go_of_stuck_thread(self, delivery_id: str, outcome: Outcome | None) -> None:
        """A sync task stopped past its hard limit or terminated still holds its thread: later ones get fresh threads.

        A thread cannot be stopped; the stuck one runs on until its function returns, and the pool it
        belongs to is let go (not waited for), so it no longer takes one of the ``slots`` threads.
        """
        task = self._sync_started.pop(delivery_id, None)
        if task is None or outcome is None or self._sync_threads is None:
            return
        deadline = self._deadlines.get(delivery_id)
        overdue = deadline is not None and time.monotonic() >= deadline[3]
        if outcome.ended is Ended.REVOKED or overdue:
            log.warning("task %s[%s] still holds a thread; it is left to finish on its own", task.name, delivery_id)
            self._sync_threads.shutdown(wait=False)
            self._sync_threads = None

    @property
    def _threads_for_sync(self) -> ThreadPoolExecutor:
        """Where sync tasks run: ``slots`` threads at most, started only when a sync task comes."""
        if self._sync_threads is None:
            self._sync_threads = ThreadPoolExecutor(self.config.slots, "conveyor-sync")
        return self._sync_threads

    def _on_start(self, delivery: Delivery, message: Message, task: BaseTask[Any, Any]) -> None:
        # From now on a crash of this process counts a delivery against this task (not while it waited
        # for its STARTED write: a backend outage holds many tasks there, none of them running).
        self.board.running(self._slots[delivery.id], delivery.id)
        now = time.monotonic()
        self._started[delivery.id] = now
        if not task.is_async:
            self._sync_started[delivery.id] = task
        if task.options.time_limit is not None:
            self._deadlines[delivery.id] = (delivery, message, task, now + task.options.time_limit)
        if self.child.notes.enabled:  # the event log hears of a start at once for a hard limit, else if it runs long
            if task.options.time_limit is not None:
                self._send(TaskRunning(delivery.id, message.task, delivery.queue))
            else:
                self._unreported[delivery.id] = (now, message.task, delivery.queue)

    def _report_long_tasks(self) -> None:
        """Send the start of each task running past LONG_TASK to the event log (a pipe message each, once)."""
        since = time.monotonic() - LONG_TASK
        long = [msg_id for msg_id, (started, _, _) in self._unreported.items() if started <= since]
        for msg_id in long:
            _, task, queue = self._unreported.pop(msg_id)
            self._send(TaskRunning(msg_id, task, queue))

    def _count(self, outcome: Outcome) -> None:
        self.child.notes.ended(outcome)
        if not outcome.ended.processed:  # a finished task's dropped copy: nothing ran
            return
        self._counts[0] += 1
        self._counts[1] += outcome.ended.failed
        if self.app.settings.max_memory_per_child is not None:  # between tasks, as on the other pools
            self._check_memory()

    def _retire(self, reason: str) -> None:
        if not self.stopping:
            self.request_stop()
            self._send(Retiring(reason))

    # -- settling ---------------------------------------------------------------------------

    async def _settle_loop(self) -> None:
        """Write finished tasks' results together, then ack them together: one round trip each per batch."""
        assert self._finished is not None
        backoff = FIRST_BACKOFF
        while True:
            if not self._closing:  # closing: settle what is left, without waiting for a wake-up
                await self._finished.wait()
            self._finished.clear()
            pending = self.settler.take()
            if not pending.acks:
                if self._closing:
                    return
                continue
            try:
                await self._offload(self._settle, pending)
            except BrokerError as exc:  # they stay pending and held (heartbeated): retried, never left to their lease
                self.settler.restore(pending)
                self._settling.failed(exc, "settling finished tasks")
                if self._closing:  # the last settle gives them back if it fails too
                    return
                self._finished.set()
                await asyncio.sleep(backoff)
                backoff = next_backoff(backoff)
                continue
            backoff = FIRST_BACKOFF
            self._settling.answered()

    def _settle(self, pending: Pending) -> None:
        # fencing: a run whose lease was lost meanwhile (a network cut) records nothing (LeaseKeeper.fence)
        self.keeper.release_all(pending.drop_lost(self.keeper.fence(pending.acks)))
        if pending.results:  # each write fenced on the server too, where the backend sees the leases
            self.keeper.release_all(pending.write_results(self.app.backend, self.app.settings.result_ttl))
            pending.results = []  # landed: a failed ack retries the acks only
        self.keeper.acking(pending.acks)
        self.app.broker.ack(pending.acks)
        for delivery in pending.acks:
            self.keeper.release(delivery)

    async def _settle_last(self) -> None:
        """At exit: settle what finished; give it back if that fails (it runs again later)."""
        pending = self.settler.take()
        if not pending.acks:
            self._send_counts()
            return
        try:
            await self._offload(self._settle, pending)
        except BrokerError as exc:
            log.warning(
                "stopping while the result backend or broker is down (%s): %d finished task(s) go back to the "
                "queue and will run again",
                exc,
                len(pending.acks),
            )
            await self._offload(self._return_unstarted, pending.acks)
        self._send_counts()

    # -- periodic: counts, limits, terminate-revocation, loop liveness -------------------------

    async def _tick_loop(self) -> None:
        next_revocation = time.monotonic() + REVOCATION_CHECK
        while True:
            await asyncio.sleep(COUNTS_EVERY)
            self.watch.tick()
            self._report_long_tasks()
            self._send_counts()
            self._check_memory()
            if time.monotonic() >= next_revocation:
                next_revocation = time.monotonic() + REVOCATION_CHECK
                with contextlib.suppress(BrokerError):
                    await self._terminate_revoked()

    async def _terminate_revoked(self) -> None:
        """Cancel the running calls whose task was revoked with terminate=True (one thread hop per look)."""
        since = time.monotonic() - REVOCATION_CHECK
        ids = [msg_id for msg_id, started in self._started.items() if started <= since and msg_id in self.calls]
        if not ids:
            return
        for msg_id in await self._offload(self._revoked_to_terminate, ids):
            call = self.calls.get(msg_id)
            if call is not None:
                call.cancel()

    def _revoked_to_terminate(self, ids: list[str]) -> list[str]:
        found = []
        for msg_id in ids:
            raw = self.app.backend.get(msg_id)
            record = None if raw is None else decode_record(raw)
            if record is not None and record.state is State.REVOKED and record.terminate:
                found.append(msg_id)
        return found

    def _check_memory(self) -> None:
        reason = None if self.stopping else memory_reason(self.app.settings)  # worker/childlimits.py
        if reason is not None:
            self._retire(reason)

    def _send_counts(self) -> None:
        processed, failed = self._counts
        if processed:
            self._counts = [0, 0]
            self._send(Counts(processed, failed))
        self.child.flush_events()

    def _send(self, event: ChildEvent) -> None:
        self.child.send(event)

    # -- outages and returns ----------------------------------------------------------------

    async def _wait_for_backend(self) -> None:
        """Probe the result backend with capped backoff until it answers (or the child stops)."""
        backoff = FIRST_BACKOFF
        while not self._should_stop():
            try:
                await self._offload(self.app.backend.get, _PROBE_ID)
            except BrokerError as exc:
                self._backend.failed(exc, "probing")
                await asyncio.sleep(backoff)
                backoff = next_backoff(backoff)
                continue
            self._backend.answered()
            self._backend_down = False
            return

    def _return_unstarted(self, deliveries: list[Delivery]) -> None:
        """Give reserved tasks that did not start (or could not be settled) back to the queue, uncounted."""
        self.child.return_unstarted(deliveries)

    async def _offload(self, step: Callable[..., T], *args: Any) -> T:
        """Run a blocking broker or backend step on the I/O threads."""
        assert self._loop is not None
        return await self._loop.run_in_executor(self._io, step, *args)


class AsyncioPool(Pool):
    """One child, one event loop, ``-c`` coroutines (see the module docstring)."""

    name: ClassVar[str] = "asyncio"

    @classmethod
    def layout(cls, concurrency: int) -> tuple[int, int]:
        return 1, concurrency

    def serve(self) -> None:
        loop = AsyncioChild(self.child)
        signal.signal(signal.SIGTERM, loop.request_stop)  # wakes the loop, not only the flag
        loop.run()


POOL = AsyncioPool
