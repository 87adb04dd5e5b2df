"""Worker child: one process that reserves only as many tasks as it has free slots and runs them.

With the process pool a child has one slot and runs each task in its main thread; with the
thread pool one child has N slots served by N threads. Either way the child heartbeats the
leases of what it holds, reports to the supervisor over a pipe, and stops reserving at once on
SIGTERM, finishing what it runs and returning what it has not started. It dies with its
supervisor (Linux PR_SET_PDEATHSIG), so a ``kill -9`` of the worker leaves no orphan holding leases.

The one-slot child is the fast path (docs/benchmarks.md): one round trip per *batch* of tasks.

    reserve up to ``prefetch`` ─► run them one by one (results and acks kept pending)
        ▲                                                   │ backlog empty
        └── write pending results, then ack + reserve in one round trip ◄┘

A task running longer than ``PREFETCH_HOLD`` gets its unstarted batch-mates returned to the
queue at once (no starvation), its pending results written and acked, and its start reported to
the supervisor (terminate-revocation); a task with a hard ``time_limit`` reports its start at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import itertools
import logging
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from types import FrameType
from typing import TYPE_CHECKING, Any

import psutil

from conveyor.app import App
from conveyor.brokers import Delivery
from conveyor.errors import BrokerError
from conveyor.message import Message
from conveyor.task import BaseTask
from conveyor.worker.backlog import Backlog
from conveyor.worker.events import Ended
from conveyor.worker.executor import BackendDown, Executor, Outcome
from conveyor.worker.leases import LeaseKeeper
from conveyor.worker.outage import FIRST_BACKOFF, Outage, next_backoff
from conveyor.worker.settle import BatchSettler, GaveUp, ImmediateSettler, Pending
from conveyor.worker.shared import ChildBoard

if TYPE_CHECKING:
    from conveyor.worker.aio_pool import AsyncioChild

log = logging.getLogger("conveyor.worker")

#: Seconds a reserve call waits for work before the child checks whether it should stop.
RESERVE_WAIT = 1.0
#: Longest pause, in seconds, between reconnection attempts while the broker is down.
MAX_BACKOFF = 5.0
#: The outcome of a delivery given back to the queue without counting (nothing ran, or its outcome
#: could not be recorded before a stop): not a processed task.
RETURNED = Ended.RETURNED
#: The id the child reads to find out whether the result backend answers again.
_PROBE_ID = "conveyor-backend-probe"
#: Seconds a task runs before the tasks prefetched behind it go back to the queue (and its start
#: is reported to the supervisor). Short enough that a long task delays no batch-mate noticeably.
PREFETCH_HOLD = 0.005
#: Seconds between the counts of finished tasks sent to the supervisor (its heartbeat reads them).
COUNTS_EVERY = 0.5
_PR_SET_PDEATHSIG = 1
#: Signals the supervisor blocks across fork() and a child unblocks once its own handlers are installed:
#: until then the child would run its copy of the supervisor's handlers and lose the signal.
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT})


@dataclasses.dataclass(frozen=True, slots=True)
class ChildConfig:
    """What a child needs to know, fixed when the supervisor starts it."""

    worker_id: str
    index: int
    queues: tuple[str, ...]
    slots: int
    lease: float
    prefetch: int = 1
    pool: str = "process"


def owner_of(worker_id: str, pid: int) -> str:
    """The lease owner name of a child process; the supervisor releases it when the child dies.

    ``worker_id`` is ``hostname.pid.nonce``: the random nonce keeps owners apart for workers in
    separate PID namespaces with one hostname (containers), whose pids repeat.
    """
    return f"{worker_id}/{pid}"


def child_main(app: App, config: ChildConfig, conn: Connection, board: ChildBoard | None = None) -> None:
    """Entry point of a child process (forked from the supervisor, which reads ``board``)."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides what Ctrl-C means
    if board is None:  # nobody watches this child: a board of its own
        board = ChildBoard(multiprocessing.get_context("fork"), config.slots)
    loop: ChildLoop | AsyncioChild
    if config.pool == "asyncio":
        from conveyor.worker.aio_pool import AsyncioChild

        loop = AsyncioChild(app, config, conn, board)
    else:
        loop = ChildLoop(app, config, conn, board)
    signal.signal(signal.SIGTERM, loop.request_stop)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)
    # The supervisor forked us with these blocked; one that arrived since is delivered now, to our handlers.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    loop.run()


class ChildLoop:
    """The reserve → run → report loop of one child."""

    def __init__(self, app: App, config: ChildConfig, conn: Connection, board: ChildBoard) -> None:
        self.app = app
        self.config = config
        self.conn = conn
        self.board = board
        self.owner = owner_of(config.worker_id, os.getpid())
        self.broker = app.broker
        one_slot = config.slots == 1
        self.settler = BatchSettler(app, lambda: self.stopping)
        settler = self.settler if one_slot else ImmediateSettler(app, lambda: self.stopping)
        self.executor = Executor(app, config.worker_id, settler, on_start=self._report_start)
        self.keeper = LeaseKeeper(self.broker, config.lease, on_beat=board.stamp, running=board.running_now)
        self.backlog = Backlog(PREFETCH_HOLD, self._on_long_task) if one_slot else None
        self.stopping = False
        self.tasks_run = 0
        # The supervisor as fork() recorded it, not getppid(): a child whose supervisor died before
        # PR_SET_PDEATHSIG was armed is already an orphan here, and must not serve.
        parent = multiprocessing.parent_process()
        self._parent = parent.pid if parent is not None and parent.pid is not None else os.getppid()
        self._send_lock = threading.Lock()
        self._free = threading.Semaphore(config.slots)
        # Start reports of the one-slot path: sent only for tasks that run long (see _on_long_task).
        self._report_lock = threading.Lock()
        self._start_event: tuple[Any, ...] | None = None
        self._start_sent = False
        self._task_is_long = False  # the watch found the running task past PREFETCH_HOLD
        self._counts = [0, 0]  # tasks ended without a start report: processed, failed (sent in bulk)
        self._counts_due = 0.0
        #: Set when the backend failed before a task started: take no work until it answers again.
        self._backend_down = False
        self._backend = Outage("result backend")
        self._settling = Outage("result backend or broker")
        self._slot = threading.local()  # this thread's slot on the board (the thread pool's threads)
        self._slots_taken = itertools.count()

    def request_stop(self, signum: int = 0, frame: FrameType | None = None) -> None:
        """Stop reserving; finish what runs (the SIGTERM handler)."""
        self.stopping = True

    def run(self) -> None:
        """Serve until asked to stop or orphaned."""
        self.keeper.start()
        self.executor.start()  # the middleware's on_child_start hooks (executor.close() runs on_child_stop)
        pool = ThreadPoolExecutor(self.config.slots, "conveyor-slot") if self.config.slots > 1 else None
        try:
            if self.backlog is not None:
                self._serve_one_slot(self.backlog)
            else:
                self._serve(pool)
        finally:
            if pool is not None:
                pool.shutdown(wait=True)
            self._wind_down()

    def _wind_down(self) -> None:
        """Settle what ran, return what did not start, stop the threads and close connections."""
        if self.backlog is not None:
            self.backlog.stop()
            self._return_unstarted(self.backlog.take_unstarted())
            try:
                self._settle_now()
            except BrokerError as exc:
                self._give_back_unsettled(exc)
            self._send_counts(force=True)
        self.keeper.stop()
        self.executor.close()
        self.app.close()

    def _give_back_unsettled(self, exc: BrokerError) -> None:
        """Stopping while finished tasks' results or acks cannot land: return them; they run again later."""
        pending = self.settler.take()
        if pending.acks:
            log.warning(
                "stopping while the result backend or broker is down (%s): %d finished task(s) go back to the "
                "queue and will run again",
                exc,
                len(pending.acks),
            )
            self._return_unstarted(pending.acks)

    # -- the one-slot path: prefetch, settle per batch ---------------------------------------

    def _serve_one_slot(self, backlog: Backlog) -> None:
        backlog.start()
        backoff = FIRST_BACKOFF
        while not self.stopping and os.getppid() == self._parent:
            if self._backend_down:  # give back what did not start, take nothing until the backend answers
                self._return_unstarted(backlog.take_unstarted())
                self._wait_for_backend()
                continue
            delivery = backlog.next()
            if delivery is not None:
                self._run_from_backlog(backlog, delivery)
                continue
            try:
                fresh = self._settle_and_reserve()
                backoff = FIRST_BACKOFF
                self._settling.answered()
            except BrokerError as exc:
                # Finished tasks stay pending and held (heartbeated): retried, never left to their lease.
                self._settling.failed(exc, "settling finished tasks")
                time.sleep(backoff)
                backoff = next_backoff(backoff)
                continue
            for reserved in fresh:
                self.keeper.hold(reserved)
            backlog.fill(fresh)

    def _settle_and_reserve(self) -> list[Delivery]:
        """Write the pending results, then ack those tasks and reserve the next batch in one call."""
        acks = self._settle_results()
        self.keeper.acking(acks)
        try:
            fresh = self.broker.ack_and_reserve(
                acks,
                self.config.queues,
                self.config.prefetch,
                owner=self.owner,
                lease=self.config.lease,
                timeout=RESERVE_WAIT,
            )
        except BrokerError:
            self.settler.restore(Pending(acks=acks))  # their results landed; the acks are retried
            raise
        finally:
            self._send_counts()
        self._release(acks)
        return fresh

    def _settle_results(self) -> list[Delivery]:
        """Write the executor's pending results; return the deliveries to ack now that they landed.

        If the write fails, everything goes back to the executor's pending lists and stays held
        (heartbeated): the caller retries later. The tasks ran; leaving them to their lease would
        count a delivery and run them again.
        """
        pending = self.settler.take()
        if pending.results:
            try:
                self.app.backend.set_many(pending.results, self.app.settings.result_ttl)
            except BrokerError:
                self.settler.restore(pending)
                raise
        return pending.acks

    def _run_from_backlog(self, backlog: Backlog, delivery: Delivery) -> None:
        try:
            outcome = self._execute(delivery)
        finally:
            backlog.finished()
        if not outcome.deferred:
            self.keeper.release(delivery)
        with self._report_lock:
            reported, self._start_event, self._start_sent = self._start_sent, None, False
            self._task_is_long = False
        if reported:
            self._send(("done", outcome.id, outcome.task, outcome.state, outcome.runtime))
        elif outcome.state == RETURNED:
            return
        else:
            self._counts[0] += 1
            self._counts[1] += outcome.ended.failed
        self._check_limits()

    def _on_long_task(self) -> None:
        """The running task passed PREFETCH_HOLD: free its batch-mates, settle, report its start."""
        with self._report_lock:
            self._task_is_long = True  # if the task has not reached its start yet, it reports it at once
            if self._start_event is not None and not self._start_sent:
                self._send(self._start_event)
                self._start_sent = True
        assert self.backlog is not None
        self._return_unstarted(self.backlog.take_unstarted())
        try:
            self._settle_now()
        except BrokerError as exc:  # they stay pending and held; the main loop retries
            self._settling.failed(exc, "settling finished tasks")

    def _settle_now(self) -> None:
        """Write the pending results, then ack their tasks (outside the batch rhythm)."""
        acks = self._settle_results()
        if acks:
            try:
                self.broker.ack(acks)
            except BrokerError:
                self.settler.restore(Pending(acks=acks))  # their results landed; the acks are retried
                raise
        self._release(acks)

    def _send_counts(self, force: bool = False) -> None:
        """Send the finished tasks' counts, at most every COUNTS_EVERY seconds: a pipe message wakes the supervisor."""
        processed, failed = self._counts
        now = time.monotonic()
        if processed and (force or now >= self._counts_due):
            self._counts = [0, 0]
            self._counts_due = now + COUNTS_EVERY
            self._send(("counts", processed, failed))

    def _release(self, deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            self.keeper.release(delivery)

    # -- the thread-pool path: one task per free slot ----------------------------------------

    def _serve(self, pool: ThreadPoolExecutor | None) -> None:
        backoff = 0.1
        while not self.stopping and os.getppid() == self._parent:
            if self._backend_down:
                self._wait_for_backend()
                continue
            if not self._free.acquire(timeout=RESERVE_WAIT):
                continue
            free = 1 + self._take_free_slots()
            try:
                deliveries = self.broker.reserve(
                    self.config.queues, free, owner=self.owner, lease=self.config.lease, timeout=RESERVE_WAIT
                )
                backoff = 0.1
            except BrokerError as exc:
                self._give_back_slots(free)
                log.warning("broker unavailable, retrying in %.1fs: %s", backoff, exc)
                time.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            self._give_back_slots(free - len(deliveries))
            self._dispatch(deliveries, pool)

    def _dispatch(self, deliveries: list[Delivery], pool: ThreadPoolExecutor | None) -> None:
        for position, delivery in enumerate(deliveries):
            if self.stopping:  # reserved but not started: back to the queue at once
                self._return_unstarted(deliveries[position:])
                self._give_back_slots(len(deliveries) - position)
                return
            self.keeper.hold(delivery)
            if pool is None:
                self._run_one(delivery)
            else:
                pool.submit(self._run_one, delivery)

    def _run_one(self, delivery: Delivery) -> None:
        try:
            outcome = self._execute(delivery)
            self._send(("done", outcome.id, outcome.task, outcome.state, outcome.runtime))
        finally:
            self.keeper.release(delivery)
            self._free.release()
        if outcome.state != RETURNED:
            self._check_limits()

    # -- shared steps ------------------------------------------------------------------------

    def _execute(self, delivery: Delivery) -> Outcome:
        slot = self._my_slot()
        self.board.running(slot, delivery.id)  # if this process dies now, only this task counts a delivery
        try:
            return self.executor.run(delivery)
        except BackendDown as exc:  # nothing ran: back to the queue uncounted, and pause
            self._backend.failed(exc, "before a task started")
            self._backend_down = True
            self._nack(delivery)
            return Outcome(delivery.id, "?", RETURNED, 0.0)
        except GaveUp as exc:  # it ran, its outcome could not be recorded before the stop
            log.warning(
                "task %s ran but its outcome was not recorded (%s); it goes back to run again", delivery.id, exc
            )
            self._nack(delivery)
            return Outcome(delivery.id, "?", RETURNED, 0.0)
        except Exception:
            # The broker or backend failed mid-way; the lease expires and the task runs again.
            log.exception("could not finish message %s; it will be redelivered", delivery.id)
            return Outcome(delivery.id, "?", Ended.ABANDONED, 0.0)
        finally:
            self.board.idle(slot)

    def _my_slot(self) -> int:
        """The board slot of the calling thread (the main thread's is 0 on the one-slot path)."""
        slot: int | None = getattr(self._slot, "index", None)
        if slot is None:
            slot = self._slot.index = next(self._slots_taken) % self.config.slots
        return slot

    def _check_limits(self) -> None:
        """Retire this child between tasks once it ran too many tasks or grew too large."""
        self.tasks_run += 1
        settings = self.app.settings
        reason = None
        if settings.max_tasks_per_child is not None and self.tasks_run >= settings.max_tasks_per_child:
            reason = f"ran {self.tasks_run} tasks (max_tasks_per_child)"
        elif settings.max_memory_per_child is not None:
            rss_mib = psutil.Process().memory_info().rss / 1_048_576
            if rss_mib > settings.max_memory_per_child:
                reason = f"uses {rss_mib:.0f} MiB (max_memory_per_child {settings.max_memory_per_child} MiB)"
        if reason is not None and not self.stopping:
            self.stopping = True
            self._send(("retire", reason))

    def _wait_for_backend(self) -> None:
        """Probe the result backend with capped backoff until it answers (or the child stops)."""
        backoff = FIRST_BACKOFF
        while not self.stopping and os.getppid() == self._parent:
            try:
                self.app.backend.get(_PROBE_ID)
            except BrokerError as exc:
                self._backend.failed(exc, "probing")
                time.sleep(backoff)
                backoff = next_backoff(backoff)
                continue
            self._backend.answered()
            self._backend_down = False
            return

    def _nack(self, delivery: Delivery) -> None:
        with contextlib.suppress(BrokerError):
            self.broker.nack(delivery)

    def _return_unstarted(self, deliveries: list[Delivery]) -> None:
        """Give reserved tasks that did not start back to the queue, at their place, at once."""
        for delivery in deliveries:
            with contextlib.suppress(BrokerError):
                self.broker.nack(delivery)
            self.keeper.release(delivery)
        if deliveries:
            log.debug("returned %d unstarted task(s) to the queue", len(deliveries))

    def _report_start(self, delivery: Delivery, message: Message, task: BaseTask[Any, Any]) -> None:
        limit = task.options.time_limit
        deadline = None if limit is None else time.time() + limit
        event = (
            "start",
            delivery.id,
            message.task,
            deadline,
            delivery.token,
            delivery.queue,
            delivery.priority,
            delivery.deliveries,
            message.attempt,
        )
        if self.backlog is None:
            self._send(event)
            return
        with self._report_lock:
            # The supervisor must know the deadline of a hard time limit from the start; a task the
            # watch already found long (slow to decode or to record STARTED) reports at once too.
            if limit is not None or self._task_is_long:
                self._send(event)
                self._start_sent = True
            else:
                self._start_event = event

    def _send(self, event: tuple[Any, ...]) -> None:
        with self._send_lock, contextlib.suppress(OSError, ValueError):
            self.conn.send(event)

    def _take_free_slots(self) -> int:
        taken = 0
        while self._free.acquire(blocking=False):
            taken += 1
        return taken

    def _give_back_slots(self, n: int) -> None:
        for _ in range(n):
            self._free.release()


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no-op elsewhere)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass
