"""Worker child: one process of a worker, and what every pool shares.

*How* a child's slots run tasks is its pool's business (worker/pools/: one slot in the main
thread, N threads, or N coroutines on one event loop); this module keeps what every pool needs:

- signals: SIGTERM stops reserving at once; what runs finishes, what has not started goes back;
- dying with the supervisor (Linux PR_SET_PDEATHSIG), so a ``kill -9`` of the worker leaves no
  orphan holding leases, and not serving at all if the supervisor died before that was armed;
- the ChildBoard (shared memory the supervisor reads), the LeaseKeeper (the heartbeat) and the pipe,
  in typed events (worker/events.py): counts in bulk every half second (also during a long task),
  a task's start and end only when the supervisor must know (hard time limit, long run), Retiring;
- per-child limits checked between tasks (worker/childlimits.py); notes for the event log (eventnotes.py);
- what to do when a delivery cannot run or be recorded (backend down: give it back and pause).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.connection import Connection
from types import FrameType
from typing import Any

from conveyor.app import App
from conveyor.brokers import Delivery
from conveyor.logging import flush_all as flush_logs
from conveyor.message import Message
from conveyor.middleware import OnStart
from conveyor.pausing import PausedQueues
from conveyor.task import BaseTask
from conveyor.worker.childlimits import limited, retire_reason
from conveyor.worker.eventnotes import EventNotes
from conveyor.worker.events import ChildEvent, Counts, Ended, Retiring, TaskFinished, TaskStarted, encode_event
from conveyor.worker.executor import BackendDown, Executor, Outcome
from conveyor.worker.leases import LeaseKeeper, owner_of
from conveyor.worker.outage import Outage, wait_until_up
from conveyor.worker.settle import GaveUp, Settler
from conveyor.worker.shared import ChildBoard

log = logging.getLogger("conveyor.worker")

#: Seconds a reserve call waits for work before the child checks whether it should stop.
RESERVE_WAIT = 1.0
#: Seconds between the counts of finished tasks sent to the supervisor (its heartbeat reads them).
COUNTS_EVERY = 0.5
#: The id the child reads to find out whether the result backend answers again.
_PROBE_ID = "conveyor-backend-probe"
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
    #: Report each delivery's events to the supervisor (for the event log, or for its metrics).
    observe: bool = True


def child_main(app: App, config: ChildConfig, conn: Connection, board: ChildBoard | None = None) -> None:
    """Entry point of a child process (forked from the supervisor, which reads ``board``)."""
    from conveyor.worker.pools import pool_class  # the pools import this module

    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides what Ctrl-C means
    if board is None:  # nobody watches this child: a board of its own
        board = ChildBoard(multiprocessing.get_context("fork"), config.slots)
    child = Child(app, config, conn, board)
    pool = pool_class(config.pool)(child)
    signal.signal(signal.SIGTERM, child.request_stop)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)
    # The supervisor forked us with these blocked; one that arrived since is delivered now, to our handlers.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    child.keeper.start()
    threading.Thread(target=child.flush_while_serving, name="conveyor-counts", daemon=True).start()
    try:
        pool.serve()
    finally:
        child.flush_counts(force=True)
        child.keeper.stop()
        app.close()
        flush_logs()  # a child leaves by os._exit: no logging.shutdown to write what its handlers hold


class Child:
    """One child process as its pool sees it (``conn``: the pipe's write end). Safe to share between threads."""

    def __init__(self, app: App, config: ChildConfig, conn: Connection, board: ChildBoard) -> None:
        self.app = app
        self.config = config
        self.conn = conn
        self.board = board
        self.owner = owner_of(config.worker_id, os.getpid())
        self.keeper = LeaseKeeper(app.broker, config.lease, on_beat=board.stamp, running=board.running_now)
        self.stopping = False
        #: Set when the backend failed before a task started: take no work until it answers again.
        self.backend_down = False
        # The supervisor as fork() recorded it, not getppid(): a child whose supervisor died before
        # PR_SET_PDEATHSIG was armed is already an orphan here, and must not serve.
        parent = multiprocessing.parent_process()
        self._parent = parent.pid if parent is not None and parent.pid is not None else os.getppid()
        self._send_lock = threading.Lock()
        self._tally_lock = threading.Lock()
        self._processed = self._failed = self.tasks_run = 0  # counts not sent yet; tasks run in all
        self._counts_due = 0.0
        #: The queues to reserve from: config.queues less the paused ones, re-read as pausing.py says.
        self.paused = PausedQueues(app.backend, config.queues, app.broker.wake_version)
        #: What the pools noted for the event log, sent with the counts (only when the app observes).
        self.notes = EventNotes(config.observe)
        self._backend = Outage("result backend")
        self._limited = limited(app.settings)

    @property
    def serving(self) -> bool:
        """True until the child is told to stop (or retires, or its supervisor is gone)."""
        return not self.stopping and os.getppid() == self._parent

    def request_stop(self, signum: int = 0, frame: FrameType | None = None) -> None:
        """Stop reserving and end an idle reserve's wait at once (the SIGTERM handler); finish what runs."""
        if not self.stopping:  # the keeper's broker is built already: a signal handler must not build one (a lock)
            self.stopping = True
            self.keeper.broker.stop_waiting()  # what the cut-short reserve took goes back with the unstarted rest

    def executor(self, settler: Settler, on_start: OnStart) -> Executor:
        """The executor a pool runs deliveries with (its settler, its start hook)."""
        return Executor(self.app, self.config.worker_id, settler, on_start=on_start)

    def execute(self, executor: Executor, slot: int, delivery: Delivery) -> Outcome:
        """Run ``delivery`` in board slot ``slot``; a failure to run or record it becomes an outcome."""
        self.board.running(slot, delivery.id)  # if this process dies now, only what runs counts a delivery
        try:
            return executor.run(delivery)
        except Exception as exc:
            return self.outcome_of_error(delivery, exc)
        finally:
            self.board.idle(slot)

    def outcome_of_error(self, delivery: Delivery, exc: Exception) -> Outcome:
        """What a delivery whose run raised out of the executor becomes (shared with async pools)."""
        if isinstance(exc, BackendDown):  # nothing ran: back to the queue uncounted, and pause
            self._backend.failed(exc, "before a task started")
            self.backend_down = True
            self.return_unstarted([delivery])
            return Outcome(delivery.id, "?", Ended.RETURNED, 0.0)
        if isinstance(exc, GaveUp):  # it ran, its outcome could not be recorded before the stop
            log.warning("task %s ran; its outcome was not recorded (%s): it goes back to run again", delivery.id, exc)
            self.return_unstarted([delivery])
            return Outcome(delivery.id, "?", Ended.RETURNED, 0.0)
        # The broker or backend failed mid-way; the lease expires and the task runs again.
        log.error("could not finish message %s; it will be redelivered", delivery.id, exc_info=exc)
        return Outcome(delivery.id, "?", Ended.ABANDONED, 0.0)

    def started(self, delivery: Delivery, message: Message, task: BaseTask[Any, Any]) -> TaskStarted:
        """The start report of a task (sent by the pool at once for a hard time limit, else if it runs long)."""
        limit = task.options.time_limit
        deadline = None if limit is None else time.time() + limit
        d = delivery
        return TaskStarted(d.id, message.task, deadline, d.token, d.queue, d.priority, d.deliveries, message.attempt)

    def ended(self, outcome: Outcome, reported: bool) -> None:
        """Count one delivery that ended: a TaskFinished if its start was reported, else in the bulk counts."""
        if reported:
            self.send(TaskFinished(outcome.id, outcome.task, outcome.ended, outcome.runtime))
        else:
            self.notes.ended(outcome)
        if not outcome.ended.processed:  # given back, or a finished task's dropped copy: nothing ran
            return
        with self._tally_lock:
            if not reported:
                self._processed += 1
                self._failed += outcome.ended.failed
            self.tasks_run += 1
            run = self.tasks_run
        if self._limited:
            self._check_limits(run)

    def flush_events(self) -> None:
        """Send what was noted for the event log since the last flush (one pipe message)."""
        report = self.notes.take()
        if report is not None:
            self.send(report)

    def send(self, event: ChildEvent) -> None:
        """Send one event to the supervisor (a closed pipe is ignored: the supervisor is gone)."""
        data = encode_event(event)
        with self._send_lock, contextlib.suppress(OSError, ValueError):
            self.conn.send_bytes(data)

    def flush_counts(self, force: bool = False) -> None:
        """Send the counts of finished tasks, at most every COUNTS_EVERY seconds (a message wakes the supervisor)."""
        now = time.monotonic()
        if not (self._processed or self.notes) or not (force or now >= self._counts_due):
            return
        with self._tally_lock:
            counts, self._processed, self._failed = Counts(self._processed, self._failed), 0, 0
        self._counts_due = now + COUNTS_EVERY
        if counts.processed:
            self.send(counts)
        self.flush_events()

    def flush_while_serving(self) -> None:
        """Send counts and events every COUNTS_EVERY seconds, also while a long task holds the pool's loop."""
        while not self.stopping:
            time.sleep(COUNTS_EVERY)
            self.flush_counts()

    def return_unstarted(self, deliveries: list[Delivery]) -> None:
        """Give reserved tasks that did not start back to the queue, at their place, at once."""
        self.keeper.give_back(deliveries)
        if deliveries:
            log.debug("returned %d unstarted task(s) to the queue", len(deliveries))

    def wait_for_backend(self) -> None:
        """Probe the result backend with capped backoff until it answers (or the child stops)."""
        if wait_until_up(lambda: self.app.backend.get(_PROBE_ID), self._backend, lambda: self.serving):
            self.backend_down = False

    def _check_limits(self, tasks_run: int) -> None:
        """Retire this child between tasks once it ran too many tasks or grew too large (worker/childlimits.py)."""
        reason = retire_reason(self.app.settings, tasks_run)
        if reason is not None and not self.stopping:
            self.stopping = True
            self.send(Retiring(reason))


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no-op elsewhere)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass
