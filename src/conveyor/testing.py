"""Helpers for testing code that uses conveyor: in this process, or against a real worker.

::

    def test_receipt() -> None:
        with in_memory(app):                 # a fresh in-memory broker and backend for this test
            r = send_receipt.delay(42)
            drain(app)                       # runs every ready task here, in this thread
            assert r.get(timeout=1) == "sent"

        with in_memory(app), eager(app):     # or: each delay() runs its task before it returns
            assert send_receipt.delay(42).get(timeout=1) == "sent"

        with run_worker(app, "shop.tasks:app", broker=f"sqlite:///{tmp_path}/q.db"):
            assert send_receipt.delay(42).get(timeout=10) == "sent"     # a real `conveyor worker`

``drain`` and ``eager`` use the same executor and the same middleware chain as a real worker
(argument conversion, results, retries, dead letters, the app's own middleware, with their
``on_child_start``/``on_child_stop`` hooks around the drain), so what passes here behaves the
same under ``conveyor worker``: a failing task's ``get()`` raises, a retried task runs again
(at once with ``eager`` on the memory broker: delays are skipped).

The pytest plugin (``conveyor.pytest_plugin``, loaded by pytest once conveyor is installed) wraps
these in fixtures; see docs/testing.md.

``drain`` publishes each batch's events to the event log too (as a worker does), unless the app's
``events`` setting is off.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from conveyor.app import App
from conveyor.backends import from_url as backend_from_url
from conveyor.brokers import Delivery
from conveyor.brokers import from_url as broker_from_url
from conveyor.brokers.memory import MemoryBroker
from conveyor.errors import ConfigurationError
from conveyor.message import Message
from conveyor.worker.events import happened
from conveyor.worker.executor import Executor, Outcome
from conveyor.worker.observer import Observer

__all__ = ["WorkerProcess", "drain", "eager", "in_memory", "run_worker", "urls", "use_broker"]

#: Seconds between the two looks at an idle broker after which :func:`drain` stops.
SETTLE = 0.05


def drain(
    app: App,
    queues: list[str] | None = None,
    *,
    timeout: float = 10.0,
    include_scheduled: bool = True,
    skip_delays: bool = False,
) -> list[Outcome]:
    """Run tasks in this thread until no ready (and, by default, no scheduled) task is left.

    Args:
        app: the app whose broker to drain.
        queues: queues to serve; every known queue by default.
        timeout: seconds after which draining stops even if tasks remain (e.g. retries forever).
        include_scheduled: also wait for countdown/ETA and retry-delayed tasks to come due.
        skip_delays: run countdown/ETA and retry-delayed tasks without waiting for them (the memory
            broker only: ``MemoryBroker.release_scheduled``).

    Returns:
        The outcome of every task run, in order.

    Raises:
        ConfigurationError: ``skip_delays`` on a broker other than the memory broker.
    """
    release = _releaser(app) if skip_delays else None
    executor = Executor(app, "drain")
    deadline = time.monotonic() + timeout
    outcomes: list[Outcome] = []
    executor.start()
    try:
        _drain_into(app, executor, queues, deadline, include_scheduled, outcomes, release)
    finally:
        executor.close()
    return outcomes


def _drain_into(
    app: App,
    executor: Executor,
    queues: list[str] | None,
    deadline: float,
    include_scheduled: bool,
    outcomes: list[Outcome],
    release: Callable[[], int] | None,
) -> None:
    while time.monotonic() < deadline:
        if release is not None:
            release()
        names = queues or [s.queue for s in app.broker.stats()] or [app.settings.default_queue]
        deliveries = app.broker.reserve(names, 100, owner="drain", lease=app.settings.lease, timeout=0.0)
        ran = [executor.run(delivery) for delivery in deliveries]
        outcomes += ran
        if deliveries:
            _publish(app, deliveries, ran)
            continue
        # An empty reserve is not proof of an empty queue. On RabbitMQ a message a scan just put
        # back (revoke, purge), or one moving from a delay level to its queue, is for a moment
        # neither handed out nor counted. So stop only when the broker's own counts show nothing
        # ready (or, by default, scheduled) on two looks SETTLE seconds apart.
        if _busy(app, queues, include_scheduled):
            time.sleep(0.01)
            continue
        time.sleep(SETTLE)
        if not _busy(app, queues, include_scheduled):
            break


def _releaser(app: App) -> Callable[[], int]:
    broker = app.broker
    if not isinstance(broker, MemoryBroker):
        raise ConfigurationError(f"skip_delays needs the memory broker (in_memory(app)), not {type(broker).__name__}")
    return broker.release_scheduled


def _publish(app: App, deliveries: list[Delivery], ran: list[Outcome]) -> None:
    """Put what this batch did in the event log, as a worker would (nothing when the app's events are off)."""
    if not app.settings.events:
        return
    now = time.time()
    observer = Observer(app, "drain")
    observer.happened(
        happened(
            [(d.id, d.queue, d.deliveries, now) for d in deliveries],
            [(o.id, o.task, o.ended, o.runtime, now) for o in ran],
        )
    )
    observer.publish(force=True)


def _busy(app: App, queues: list[str] | None, include_scheduled: bool) -> bool:
    """Whether the broker counts a ready (or, with ``include_scheduled``, a scheduled) message."""
    pending = [s for s in app.broker.stats() if (queues is None or s.queue in queues)]
    return any(s.ready or (include_scheduled and s.scheduled) for s in pending)


@contextlib.contextmanager
def use_broker(app: App, broker: str, backend: str | None = None) -> Iterator[App]:
    """Run ``app`` on another broker (and backend: the broker's engine by default) until the block ends.

    The app's settings keep their URLs; only the connections it uses change, so a module-level app
    (``shop.tasks:app``) can be tested without an environment variable set before its import. The
    connections are closed, and the app's own restored, when the block ends.
    """
    results = backend_from_url(backend or broker)
    queue = broker_from_url(broker, max_deliveries=app.settings.max_deliveries, store=results)
    saved = app._broker, app._backend  # the App builds these lazily from its settings; here they are given
    saved_urls = _URLS.get(app)
    app._broker, app._backend = queue, results
    _URLS[app] = (broker, backend or broker)
    try:
        yield app
    finally:
        app._broker, app._backend = saved
        if saved_urls is None:
            del _URLS[app]
        else:
            _URLS[app] = saved_urls
        queue.close()
        results.close()


#: The (broker, backend) URLs an app runs on inside :func:`use_broker`, for :func:`run_worker` to pass on.
_URLS: weakref.WeakKeyDictionary[App, tuple[str, str]] = weakref.WeakKeyDictionary()


def urls(app: App) -> tuple[str, str]:
    """The broker and result backend URLs ``app`` runs on now (its settings', or :func:`use_broker`'s)."""
    return _URLS.get(app) or (app.settings.broker_url, app.settings.result_url)


def in_memory(app: App) -> contextlib.AbstractContextManager[App]:
    """Run ``app`` on a fresh in-memory broker and backend until the block ends: no server, no state left over."""
    return use_broker(app, "memory://")


@contextlib.contextmanager
def eager(app: App, *, skip_delays: bool = True, timeout: float = 10.0) -> Iterator[App]:
    """Until the block ends, every task ``app`` sends runs in this thread before ``delay()`` returns.

    Each send is followed by a :func:`drain` of the app's broker, up to ``timeout`` seconds. On the
    memory broker, a ``countdown``, an ``eta`` and a retry's backoff are not waited for (as in
    Celery's eager mode; the retry still goes through the Retries middleware and is recorded);
    ``skip_delays=False``, or another broker, waits them out. A task that sends another task while
    it runs only enqueues it; the drain that runs it runs the new one next, as a worker would.
    """
    send, asend = app.send, app.asend
    local = threading.local()

    def send_and_run(messages: Sequence[Message], *, connection: object | None = None) -> list[str]:
        ids = send(messages, connection=connection)
        if not getattr(local, "draining", False):
            local.draining = True
            try:
                drain(app, timeout=timeout, skip_delays=skip_delays and isinstance(app.broker, MemoryBroker))
            finally:
                local.draining = False
        return ids

    async def asend_and_run(messages: Sequence[Message], *, connection: object | None = None) -> list[str]:
        if connection is not None:  # an async connection: the sync send cannot use it, the real asend can
            ids = await asend(messages, connection=connection)
            drain(app, timeout=timeout, skip_delays=skip_delays and isinstance(app.broker, MemoryBroker))
            return ids
        return send_and_run(messages)  # eager: the tasks run here, in the caller's thread, as for send()

    setattr(app, "send", send_and_run)  # noqa: B010 - an instance attribute shadows the method until the end
    setattr(app, "asend", asend_and_run)  # noqa: B010 - the same for aapply_async() and workflows
    setattr(app, "_asend", asend_and_run)  # noqa: B010 - and adelay() (asend's hot path, no coroutine of its own)
    try:
        yield app
    finally:
        delattr(app, "send")
        delattr(app, "asend")
        delattr(app, "_asend")


class WorkerProcess:
    """A ``conveyor worker`` subprocess started by :func:`run_worker`.

    Attributes:
        proc: the subprocess (its pid is the worker's supervisor).
        log: the file its output goes to.
    """

    #: The output, kept once the log file is gone (a class default: subclasses that start their own
    #: process set only ``proc`` and ``log``).
    _kept: str | None = None

    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc = proc
        self.log = log

    @property
    def pid(self) -> int:
        """The worker's (supervisor's) process id."""
        return self.proc.pid

    def output(self) -> str:
        """Everything the worker printed so far (all of it, once :func:`run_worker`'s block has ended)."""
        return self._kept if self._kept is not None else self.log.read_text(errors="replace")

    def _keep_output(self) -> None:
        self._kept = self.output()

    def stop(self, timeout: float = 20.0) -> int:
        """Stop the worker gracefully (SIGTERM), killing it after ``timeout`` seconds; returns its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
            raise AssertionError(f"worker did not stop within {timeout:g}s:\n{self.output()}") from None


@contextlib.contextmanager
def run_worker(
    app: App,
    target: str,
    *args: str,
    broker: str | None = None,
    backend: str | None = None,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    ready_timeout: float = 20.0,
) -> Iterator[WorkerProcess]:
    """Run ``conveyor worker TARGET ARGS...`` in a subprocess, on the broker ``app`` uses, until the block ends.

    Args:
        app: the app the test sends with (the worker's module builds the same app: ``target`` names it).
        target: the worker's ``module:attribute``, e.g. ``"shop.tasks:app"``.
        *args: more worker options, e.g. ``"-c", "2", "--pool", "thread"``.
        broker: run both the test's app (see :func:`use_broker`) and the worker on this broker URL;
            by default they use the app's current one (which must reach across processes: not ``memory://``).
        backend: the result backend URL that goes with ``broker``.
        env: more environment variables for the worker (``CONVEYOR_*`` settings, say).
        cwd: the worker's directory; the test's by default. The worker imports what this process can:
            its ``sys.path`` is passed on as ``PYTHONPATH``.
        ready_timeout: seconds to wait for the worker to register with the broker.

    Raises:
        ConfigurationError: the broker is ``memory://`` (a worker in another process cannot see it).
        AssertionError: the worker exited, or did not register within ``ready_timeout`` (its output is in the message).
    """
    with contextlib.ExitStack() as stack:
        if broker is not None:
            stack.enter_context(use_broker(app, broker, backend))
        broker_url, backend_url = urls(app)
        if broker_url.startswith("memory:"):
            raise ConfigurationError("run_worker needs a broker other processes reach (sqlite:///..., redis://...)")
        worker_env = {**os.environ, **(env or {})}
        worker_env["CONVEYOR_BROKER_URL"] = broker_url
        worker_env["CONVEYOR_BACKEND_URL"] = backend_url
        worker_env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        log = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="conveyor-worker-"))) / "worker.log"
        command = [sys.executable, "-m", "conveyor", "worker", target, *args]
        with log.open("wb") as out:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(command, cwd=cwd, env=worker_env, stdout=out, stderr=subprocess.STDOUT)
        worker = WorkerProcess(proc, log)
        stack.callback(worker._keep_output)  # after the stop below, before the log's directory goes
        stack.callback(worker.stop)
        _wait_registered(app, worker, ready_timeout)
        yield worker


def _wait_registered(app: App, worker: WorkerProcess, timeout: float) -> None:
    """Wait until the worker's heartbeat lists it with the broker (it serves from then on)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.proc.poll() is not None:
            raise AssertionError(f"worker exited with status {worker.proc.returncode}:\n{worker.output()}")
        if any(info.pid == worker.pid for info in app.broker.workers()):
            return
        time.sleep(0.05)
    raise AssertionError(f"worker did not register within {timeout:g}s:\n{worker.output()}")
