"""Prometheus metrics: a worker's task counters and runtimes, and the broker's gauges read at scrape time.

A worker's supervisor owns one :class:`WorkerMetrics` registry. Its children never touch it: what
they did reaches the supervisor as events over their pipes (worker/events.py), so the counts are
right with any number of child processes and need no shared multiprocess directory. The dashboard
serves the broker gauges alone (:func:`broker_registry`), read through the same calls as
``conveyor status``; it keeps no counter a restart would lose.

Served over plain HTTP by :class:`MetricsServer` on the supervisor's own thread (it answers between
two ticks of its loop): no thread is ever running when the supervisor forks a child.
"""

from __future__ import annotations

import selectors
import wsgiref.simple_server
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from conveyor.errors import BrokerError, ConfigurationError

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from conveyor.app import App

#: Buckets of the runtime histogram, in seconds (no-op tasks to long jobs).
RUNTIME_BUCKETS = (0.001, 0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0)


class BrokerCollector(Collector):
    """Gauges read from the broker at each scrape: depth, in flight and dead per queue, live workers."""

    def __init__(self, app: App) -> None:
        self.app = app

    def collect(self) -> Iterable[Metric]:
        depth = GaugeMetricFamily("conveyor_queue_depth", "Messages ready or scheduled, per queue.", labels=["queue"])
        in_flight = GaugeMetricFamily("conveyor_in_flight", "Messages leased to a worker, per queue.", labels=["queue"])
        dead = GaugeMetricFamily("conveyor_dead_letters", "Dead letters, per queue.", labels=["queue"])
        up = GaugeMetricFamily("conveyor_workers_up", "Live workers (heartbeat younger than its ttl).")
        broker_up = GaugeMetricFamily("conveyor_broker_up", "1 when the broker answered this scrape, else 0.")
        try:
            stats, workers = self.app.broker.stats(), self.app.broker.workers()
        except BrokerError:
            broker_up.add_metric([], 0)
            return [broker_up]
        for q in stats:
            depth.add_metric([q.queue], q.ready + q.scheduled)
            in_flight.add_metric([q.queue], q.in_flight)
            dead.add_metric([q.queue], q.dead)
        up.add_metric([], len(workers))
        broker_up.add_metric([], 1)
        return [depth, in_flight, dead, up, broker_up]


def broker_registry(app: App) -> CollectorRegistry:
    """A registry with the broker gauges only (what the dashboard serves at ``/metrics``)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BrokerCollector(app))
    return registry


class WorkerMetrics:
    """One worker's metrics; updated by its supervisor from its children's events."""

    def __init__(self, app: App) -> None:
        self.registry = broker_registry(app)
        self.tasks = Counter(
            "conveyor_tasks", "Deliveries this worker ended, per task and final state.", ["task", "state"],
            registry=self.registry,
        )  # fmt: skip
        self.runtime = Histogram(
            "conveyor_task_runtime_seconds", "Seconds each task ran.", ["task"], buckets=RUNTIME_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.received = Counter(
            "conveyor_received", "Deliveries this worker reserved.", ["queue"], registry=self.registry
        )
        self.redeliveries = Counter(
            "conveyor_redeliveries", "Deliveries of a message handed out before (a crash, a lost lease).", ["queue"],
            registry=self.registry,
        )  # fmt: skip

    def received_one(self, queue: str, deliveries: int) -> None:
        """Count a reserved delivery (a redelivery when it was handed out before)."""
        self.received.labels(queue).inc()
        if deliveries > 1:
            self.redeliveries.labels(queue).inc()

    def ended_one(self, task: str, state: str, runtime: float) -> None:
        """Count a delivery that ended in ``state`` (SUCCESS, FAILURE, RETRY, REVOKED, DEAD, ABANDONED)."""
        self.tasks.labels(task, state).inc()
        if state in ("SUCCESS", "FAILURE", "RETRY"):  # it ran
            self.runtime.labels(task).observe(runtime)


class _QuietHandler(wsgiref.simple_server.WSGIRequestHandler):
    """No access log on stderr; a client that stalls is dropped after ``timeout`` seconds."""

    timeout = 2.0

    def log_message(self, format: str, *args: object) -> None:
        pass


class MetricsServer:
    """``/metrics`` over HTTP, answered by whoever calls :meth:`serve_ready` (no thread of its own).

    Raises:
        ConfigurationError: the port cannot be bound (taken, or privileged).

    Args:
        registry: what to serve.
        port: TCP port; 0 picks a free one (see :attr:`port`).
        host: the address to bind.
    """

    def __init__(self, registry: CollectorRegistry, port: int, host: str = "0.0.0.0") -> None:
        try:
            self.server = wsgiref.simple_server.make_server(
                host, port, make_wsgi_app(registry), handler_class=_QuietHandler
            )
        except OSError as exc:
            raise ConfigurationError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from exc
        self.server.timeout = 0
        self.port: int = self.server.server_address[1]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.server.socket, selectors.EVENT_READ)

    def fileno(self) -> int:
        """The listening socket, for ``multiprocessing.connection.wait``."""
        return self.server.socket.fileno()

    def serve_ready(self) -> None:
        """Answer the requests waiting now, without blocking for new ones."""
        while self._selector.select(timeout=0):
            try:
                self.server.handle_request()
            except (TimeoutError, OSError):  # a client that went away
                return

    def close(self) -> None:
        """Stop listening."""
        self._selector.close()
        self.server.server_close()
