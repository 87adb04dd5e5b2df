"""Supervisor: starts the worker's children, replaces the ones that die, and stops them.

- A child that dies (crash, OOM kill, ``kill -9``) is replaced, and the messages it held go back
  to the queue at once (``release_owner``); lease expiry is only for a worker that died whole.
- A task past its hard ``time_limit`` gets its child killed and replaced; the task is recorded
  FAILURE with TimeLimitExceeded and acknowledged, and the worker keeps serving.
- SIGTERM or SIGINT: graceful stop. Children stop reserving, return unstarted tasks and finish
  running ones within ``shutdown_grace`` seconds. A second SIGTERM/SIGINT, or SIGQUIT, stops
  hard: children are killed and their tasks returned to the queue to run again.
- Every few seconds it records a heartbeat in the broker (``conveyor status`` lists live workers).
- What the children report feeds the event log and, with ``metrics_port``, Prometheus (worker/observer.py).
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import signal
import socket
import time
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import TYPE_CHECKING, Any

import msgspec

from conveyor.app import App
from conveyor.brokers import Delivery, WorkerInfo
from conveyor.errors import BrokerError
from conveyor.results import past_hard_limit
from conveyor.settings import redact_url
from conveyor.states import ResultRecord, State, decode_record, encode_record
from conveyor.worker.child import STOP_SIGNALS, ChildConfig, child_main
from conveyor.worker.events import (
    ChildEvent,
    Counts,
    Ended,
    Happened,
    Retiring,
    TaskFinished,
    TaskRunning,
    TaskStarted,
    decode_event,
)
from conveyor.worker.leases import owner_of
from conveyor.worker.observer import Observer
from conveyor.worker.outage import Outage
from conveyor.worker.pools import pool_class
from conveyor.worker.shared import ChildBoard

if TYPE_CHECKING:
    from conveyor.metrics import MetricsServer

log = logging.getLogger("conveyor.worker")

#: Seconds between worker heartbeats in the broker's registry.
HEARTBEAT_INTERVAL = 2.0
#: A worker whose heartbeat is older than this many seconds is not live.
HEARTBEAT_TTL = 10.0
#: Seconds between looks for running tasks revoked with terminate=True.
REVOCATION_CHECK = 1.0
#: Seconds the supervisor sleeps at most between looking at its children.
TICK = 0.25


@dataclasses.dataclass(slots=True)
class _Running:
    """A task a child reported starting: enough to fail and ack it if its hard limit passes."""

    task: str
    deadline: float | None
    delivery: Delivery
    attempt: int


@dataclasses.dataclass(slots=True)
class _Child:
    index: int
    process: BaseProcess
    conn: Connection
    owner: str
    board: ChildBoard
    running: dict[str, _Running] = dataclasses.field(default_factory=dict)
    #: Monotonic time before which the supervisor does not extend this child's leases again.
    next_extend: float = 0.0
    killed_for: str | None = None
    retiring: str | None = None


class Supervisor:
    """Runs a worker: N children, their replacement, signals and the registry heartbeat.

    Args:
        app: the app to serve.
        concurrency: tasks run at once (processes, threads with ``pool="thread"``, coroutines with ``"asyncio"``).
        queues: queues to serve, in priority order.
        pool: a pool name (worker/pools/): ``process`` (one child per slot), ``thread`` (one child, N threads)
            or ``asyncio`` (one child, one event loop).
        metrics_port: serve Prometheus ``/metrics`` on this TCP port (0: any free port); None: no metrics.
    """

    def __init__(
        self, app: App, *, concurrency: int, queues: tuple[str, ...], pool: str, metrics_port: int | None = None
    ) -> None:
        self.app = app
        self.concurrency = concurrency
        self.queues = queues
        self.pool = pool
        self.worker_id = f"{socket.gethostname()}.{os.getpid()}.{os.urandom(4).hex()}"  # nonce: PID namespaces
        self.children: dict[int, _Child] = {}
        self.started = time.time()
        self.processed = 0
        self.failed = 0
        self.stopping = False
        self.hard = False
        self.grace_deadline = 0.0
        self._next_heartbeat = 0.0
        self._next_revocation_check = 0.0
        self._ctx = multiprocessing.get_context("fork")
        self._registry = Outage("worker registry")
        self.child_count, self.slots = pool_class(pool).layout(concurrency)
        self.metrics_server: MetricsServer | None = None
        metrics = None
        if metrics_port is not None:
            from conveyor.metrics import MetricsServer, WorkerMetrics  # prometheus-client, only when asked for

            metrics = WorkerMetrics(app)
            self.metrics_server = MetricsServer(metrics.registry, metrics_port)  # binds now: a taken port fails early
        self.observer = Observer(app, self.worker_id, metrics)

    # -- lifecycle ---------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until stopped by a signal; return the process exit code."""
        self._install_signals()
        chain = self.app.finalize()  # built once, before the children fork
        chain.lifecycle(chain.on_worker_start, self.app)
        # Listed as live before it says it is ready, and before any child forks: a broker that refuses the
        # configuration (a PostgreSQL schema to migrate) stops the worker with one line, not a child's traceback.
        self._heartbeat("worker-online")
        for index in range(self.child_count):
            self._start_child(index)
        if self.metrics_server is not None:
            log.info("serving Prometheus metrics on http://0.0.0.0:%d/metrics", self.metrics_server.port)
        self._log_banner()  # after the first heartbeat above: listed as live before it says it is ready
        try:
            while self.children and not self.hard:
                self._tick()
        finally:
            self._shutdown()
        return 0

    def _log_banner(self) -> None:
        """The ready line, with where messages and results live (absolute paths) and every registered task."""
        settings = self.app.settings
        results = "" if settings.backend_url is None else f", results {_redact(settings.backend_url)}"
        log.info(
            "worker %s ready: %d %s slot(s) on queue(s) %s, broker %s%s",
            self.worker_id,
            self.concurrency,
            self.pool,
            ",".join(self.queues),
            _redact(settings.broker_url),
            results,
        )
        names = sorted(self.app.tasks)
        log.info("%d task(s) registered: %s", len(names), ", ".join(names) or "none (declare them with @app.task)")

    def _tick(self) -> None:
        waitables: list[Any] = [c.conn for c in self.children.values()]
        waitables += [c.process.sentinel for c in self.children.values()]
        if self.metrics_server is not None:
            waitables.append(self.metrics_server)
        for ready in wait(waitables, timeout=TICK):
            if isinstance(ready, Connection):
                self._drain(ready)
            elif self.metrics_server is not None and ready is self.metrics_server:  # type: ignore[comparison-overlap]
                self.metrics_server.serve_ready()
        self._reap()
        self._keep_starved_leases()
        self._enforce_time_limits()
        self._terminate_revoked()
        if self.stopping and time.time() >= self.grace_deadline and self.children:
            log.warning("grace period of %.0fs is over; stopping running tasks hard", self.app.settings.shutdown_grace)
            self.hard = True
        self._heartbeat()
        self.observer.publish()

    def _shutdown(self) -> None:
        for child in list(self.children.values()):
            if child.process.is_alive():
                child.process.kill()
            child.process.join(timeout=5)
            self._release(child, "worker stopped hard")
        self.children.clear()
        try:
            self.app.broker.unregister_worker(self.worker_id)
        except BrokerError as exc:
            log.warning("could not unregister worker: %s", exc)
        self.observer.worker("worker-offline", self._info(time.time()), [])
        self.observer.publish(force=True)
        if self.metrics_server is not None:
            self.metrics_server.close()
        chain = self.app.finalize()
        chain.lifecycle(chain.on_worker_stop, self.app)
        log.info("worker %s stopped: %d task(s) processed, %d failed", self.worker_id, self.processed, self.failed)

    # -- children ----------------------------------------------------------------------------

    def _start_child(self, index: int) -> None:
        parent_conn, child_conn = self._ctx.Pipe(duplex=False)
        board = ChildBoard(self._ctx, self.slots)
        settings = self.app.settings
        observe = settings.events or self.metrics_server is not None
        config = ChildConfig(
            self.worker_id, index, self.queues, self.slots, settings.lease, settings.prefetch, self.pool, observe
        )
        process = self._ctx.Process(
            target=child_main, args=(self.app, config, child_conn, board), name=f"conveyor-child-{index}"
        )
        process.daemon = False
        # No connection crosses fork(): SQLite's lock state would be shared with the child (see
        # tests/engines/sqlite/test_sqlite_specific.py); the supervisor reconnects lazily on its next call.
        self.app.close()
        # Stop signals stay pending across fork() until the child has its own handlers (see STOP_SIGNALS);
        # ours run as soon as the mask is restored.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            process.start()
            child_conn.close()
            # Listed before the mask is restored: a stop signal that came during the fork runs then, and
            # must find this child to pass SIGTERM on (else it serves on until the grace period ends).
            self.children[index] = _Child(
                index, process, parent_conn, owner_of(self.worker_id, process.pid or 0), board
            )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        log.debug("started child %d (pid %s)", index, process.pid)

    def _reap(self) -> None:
        for index, child in list(self.children.items()):
            if child.process.is_alive():
                continue
            child.process.join()
            self._drain(child.conn)
            del self.children[index]
            code = child.process.exitcode
            if child.retiring is not None and code == 0:
                log.info("child %d (pid %s) retired: %s; starting a new one", index, child.process.pid, child.retiring)
            elif not self.stopping or code not in (0, None):
                self._report_death(child, code)
            self._release(child, "its process exited")
            if not self.stopping:
                self._start_child(index)

    def _report_death(self, child: _Child, code: int | None) -> None:
        if child.killed_for is not None:
            return
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        tasks = ", ".join(f"{r.task}[{i}]" for i, r in child.running.items()) or "no task"
        log.error(
            "child %d (pid %s) died with %s while running %s; its tasks go back to the queue",
            child.index,
            child.process.pid,
            how,
            tasks,
        )

    def _release(self, child: _Child, why: str) -> None:
        """Return a dead child's messages: only what it was running counts a delivery (see ChildBoard)."""
        try:
            released = self.app.broker.release_owner(child.owner, child.board.running_ids())
        except BrokerError as exc:
            log.error("could not return child %d's tasks (%s); they return when their lease expires", child.index, exc)
            return
        if released:
            log.warning("returned %d task(s) of child %d to the queue (%s)", released, child.index, why)

    def _drain(self, conn: Connection) -> None:
        child = next((c for c in self.children.values() if c.conn is conn), None)
        try:
            while conn.poll():
                event = decode_event(conn.recv_bytes())
                if child is not None:
                    self._on_event(child, event)
        except (EOFError, OSError):
            pass
        except msgspec.DecodeError as exc:  # a child that wrote half a message as it was killed
            log.debug("ignoring an undecodable event from a child: %s", exc)

    def _on_event(self, child: _Child, event: ChildEvent) -> None:
        if isinstance(event, Counts):  # tasks that ended without a start report, counted per batch
            self.processed += event.processed
            self.failed += event.failed
        elif isinstance(event, Happened):
            self.observer.happened(event)
        elif isinstance(event, TaskStarted):
            delivery = Delivery(event.id, event.queue, b"", event.priority, event.deliveries, event.token, child.owner)
            child.running[event.id] = _Running(event.task, event.deadline, delivery, event.attempt)
            self.observer.started(event)
        elif isinstance(event, TaskRunning):  # not watched: its child enforces its limits
            self.observer.started(event)
        elif isinstance(event, TaskFinished):
            child.running.pop(event.id, None)
            self.processed += event.ended.processed
            self.failed += event.ended.failed
            self.observer.finished(event)
        elif isinstance(event, Retiring):
            child.retiring = event.reason

    # -- leases of a child whose heartbeat is starved -----------------------------------------

    def _keep_starved_leases(self) -> None:
        """Extend the leases of each child whose own heartbeat went stale (a task holding the GIL).

        A child's keeper stamps its board every ``lease / 3``; a stamp older than ``lease / 2``
        means its heartbeat thread cannot run, so the supervisor extends every lease that child
        holds, every ``lease / 3`` while the stamp stays stale. Costs nothing while children beat.
        """
        lease = self.app.settings.lease
        now = time.monotonic()
        for child in self.children.values():
            if child.board.beat_age() <= lease / 2 or now < child.next_extend or not child.process.is_alive():
                continue
            if child.next_extend == 0.0:
                log.warning(
                    "child %d's heartbeat is starved (a task holding the GIL?); keeping its leases", child.index
                )
            child.next_extend = now + lease / 3
            try:
                self.app.broker.extend_owner(child.owner, lease)
            except BrokerError as exc:
                log.warning("could not extend child %d's leases: %s", child.index, exc)
        for child in self.children.values():
            if child.next_extend and child.board.beat_age() <= lease / 2:
                child.next_extend = 0.0  # its heartbeat is back

    # -- hard time limits --------------------------------------------------------------------

    def _enforce_time_limits(self) -> None:
        now = time.time()
        for child in list(self.children.values()):
            for msg_id, running in list(child.running.items()):
                if running.deadline is not None and now >= running.deadline:
                    log.error(
                        "task %s[%s] exceeded its hard time limit; replacing child %d",
                        running.task,
                        msg_id,
                        child.index,
                    )
                    record = past_hard_limit(running.task, running.attempt, self.worker_id)
                    self._stop_running_task(child, msg_id, running, record)
                    self.failed += 1

    def _terminate_revoked(self) -> None:
        """Every second: replace the child of a running task revoked with terminate=True."""
        now = time.time()
        if now < self._next_revocation_check:
            return
        self._next_revocation_check = now + REVOCATION_CHECK
        for child in list(self.children.values()):
            for msg_id, running in list(child.running.items()):
                try:
                    raw = self.app.backend.get(msg_id)
                except BrokerError:
                    return
                record = None if raw is None else decode_record(raw)
                if record is not None and record.state is State.REVOKED and record.terminate:
                    log.warning("task %s[%s] was revoked; terminating it (child %d)", running.task, msg_id, child.index)
                    self._stop_running_task(child, msg_id, running, record)

    def _stop_running_task(self, child: _Child, msg_id: str, running: _Running, record: ResultRecord) -> None:
        """Record the task's final state, acknowledge it, and kill (then replace) the child running it."""
        try:
            self.app.backend.set(msg_id, record.state, encode_record(record), self.app.settings.result_ttl)
            self.app.broker.ack([running.delivery])
        except BrokerError as exc:
            log.error("could not record the end of %s: %s", msg_id, exc)
        child.running.pop(msg_id, None)
        self.observer.killed(msg_id, running.task, Ended.REVOKED if record.state is State.REVOKED else Ended.FAILURE)
        child.killed_for = msg_id
        child.process.kill()

    # -- signals and heartbeat ---------------------------------------------------------------

    def _install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGQUIT, self._on_hard_signal)

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:
            self._on_hard_signal(signum, frame)
            return
        self.stopping = True
        self.grace_deadline = time.time() + self.app.settings.shutdown_grace
        log.info(
            "stopping gracefully (%s): finishing running tasks within %.0fs; signal again to stop now",
            signal.Signals(signum).name,
            self.app.settings.shutdown_grace,
        )
        for child in self.children.values():
            if child.process.pid is not None and child.process.is_alive():
                os.kill(child.process.pid, signal.SIGTERM)

    def _on_hard_signal(self, signum: int, frame: FrameType | None) -> None:
        log.warning("stopping now (%s): running tasks go back to the queue", signal.Signals(signum).name)
        self.stopping = self.hard = True

    def _heartbeat(self, kind: str = "worker-heartbeat") -> None:
        now = time.time()
        if now < self._next_heartbeat or self.stopping:
            return
        self._next_heartbeat = now + HEARTBEAT_INTERVAL
        info = self._info(now)
        self.observer.worker(kind, info, [i for c in self.children.values() for i in c.board.running_now()])
        try:
            self.app.broker.register_worker(info, HEARTBEAT_TTL)
            self.app.broker.recover()
        except BrokerError as exc:
            self._registry.failed(exc, "worker heartbeat")  # logged once per outage, not every 2 s
        else:
            self._registry.answered()

    def _info(self, now: float) -> WorkerInfo:
        """What this worker says about itself in its heartbeat."""
        return WorkerInfo(
            self.worker_id,
            socket.gethostname(),
            os.getpid(),
            self.queues,
            self.concurrency,
            self.pool,
            self.started,
            now,
            self.processed,
            self.failed,
        )


def _redact(url: str) -> str:
    """A URL with its password replaced, for logs (see :func:`conveyor.settings.redact_url`)."""
    return redact_url(url)
