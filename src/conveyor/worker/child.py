"""Worker child: one process that reserves only as many tasks as it has free slots and runs them.

With the process pool a child has one slot and runs each task in its main thread; with the
thread pool one child has N slots served by N threads. Either way the child heartbeats the
leases of what it runs, reports starts and outcomes to the supervisor over a pipe, and stops
reserving at once on SIGTERM, finishing what it runs. It dies with its supervisor (Linux
PR_SET_PDEATHSIG), so a ``kill -9`` of the worker leaves no orphan holding leases.
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
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from types import FrameType
from typing import Any

import psutil

from conveyor.app import App
from conveyor.brokers import Delivery
from conveyor.errors import BrokerError
from conveyor.message import Message
from conveyor.task import BaseTask
from conveyor.worker.executor import Executor
from conveyor.worker.leases import LeaseKeeper

log = logging.getLogger("conveyor.worker")

#: Seconds a reserve call waits for work before the child checks whether it should stop.
RESERVE_WAIT = 1.0
#: Longest pause, in seconds, between reconnection attempts while the broker is down.
MAX_BACKOFF = 5.0
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


def owner_of(worker_id: str, pid: int) -> str:
    """The lease owner name of a child process; the supervisor releases it when the child dies."""
    return f"{worker_id}/{pid}"


def child_main(app: App, config: ChildConfig, conn: Connection) -> None:
    """Entry point of a child process (forked from the supervisor)."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides what Ctrl-C means
    loop = ChildLoop(app, config, conn)
    signal.signal(signal.SIGTERM, loop.request_stop)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)
    # The supervisor forked us with these blocked; one that arrived since is delivered now, to our handlers.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    loop.run()


class ChildLoop:
    """The reserve → run → report loop of one child."""

    def __init__(self, app: App, config: ChildConfig, conn: Connection) -> None:
        self.app = app
        self.config = config
        self.conn = conn
        self.owner = owner_of(config.worker_id, os.getpid())
        self.broker = app.broker
        self.executor = Executor(app, config.worker_id, on_start=self._report_start)
        self.keeper = LeaseKeeper(self.broker, config.lease)
        self.stopping = False
        self.tasks_run = 0
        # The supervisor as fork() recorded it, not getppid(): a child whose supervisor died before
        # PR_SET_PDEATHSIG was armed is already an orphan here, and must not serve.
        parent = multiprocessing.parent_process()
        self._parent = parent.pid if parent is not None and parent.pid is not None else os.getppid()
        self._send_lock = threading.Lock()
        self._free = threading.Semaphore(config.slots)

    def request_stop(self, signum: int = 0, frame: FrameType | None = None) -> None:
        """Stop reserving; finish what runs (the SIGTERM handler)."""
        self.stopping = True

    def run(self) -> None:
        """Serve until asked to stop or orphaned."""
        self.keeper.start()
        pool = ThreadPoolExecutor(self.config.slots, "conveyor-slot") if self.config.slots > 1 else None
        try:
            self._serve(pool)
        finally:
            if pool is not None:
                pool.shutdown(wait=True)
            self.keeper.stop()
            self.executor.close()
            self.app.close()

    def _serve(self, pool: ThreadPoolExecutor | None) -> None:
        backoff = 0.1
        while not self.stopping and os.getppid() == self._parent:
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
                return
            self.keeper.hold(delivery)
            if pool is None:
                self._run_one(delivery)
            else:
                pool.submit(self._run_one, delivery)

    def _run_one(self, delivery: Delivery) -> None:
        try:
            outcome = self.executor.run(delivery)
            self._send(("done", outcome.id, outcome.task, outcome.state, outcome.runtime))
        except Exception:
            # The broker or backend failed mid-way; the lease expires and the task runs again.
            log.exception("could not finish message %s; it will be redelivered", delivery.id)
            self._send(("done", delivery.id, "?", "ERROR", 0.0))
        finally:
            self.keeper.release(delivery)
            self._free.release()
        self._check_limits()

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

    def _return_unstarted(self, deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            with contextlib.suppress(BrokerError):
                self.broker.nack(delivery)
            self._free.release()
        log.info("returned %d unstarted task(s) to the queue", len(deliveries))

    def _report_start(self, delivery: Delivery, message: Message, task: BaseTask[Any, Any]) -> None:
        limit = task.options.time_limit
        deadline = None if limit is None else time.time() + limit
        self._send(
            (
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
        )

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
