"""Prometheus metrics: task counters and runtimes, and the broker's gauges read at scrape time.

One set of series, two sources:

- a worker's ``--metrics-port``: its supervisor owns one :class:`WorkerMetrics` registry. Its
  children never touch it: what they did reaches the supervisor as events over their pipes
  (worker/events.py), so the counts are right with any number of child processes and need no
  shared multiprocess directory. Per worker, from its start (a restart starts them at 0, as any
  Prometheus counter).
- the dashboard's ``/metrics`` (:func:`dashboard_registry`): the same task series for the whole
  system, read at scrape time from counters the engine keeps (``Store.add_counts``): each worker
  adds its :class:`Tally` there with each event batch it publishes (every half second), so the
  dashboard keeps nothing in memory, any number of dashboards agree, and a restart of either loses
  nothing. Written only while events are on (``App(events=...)``).

Both serve the broker's gauges (:class:`BrokerCollector`), read through the same calls as ``conveyor status``.

Served over plain HTTP by :class:`MetricsServer` on the supervisor's own thread (it answers between
two ticks of its loop): no thread is ever running when the supervisor forks a child.
"""

from __future__ import annotations

import itertools
import selectors
import wsgiref.simple_server
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from conveyor.errors import BrokerError, ConfigurationError
from conveyor.tally import COUNTS_KEY, RUNTIME_BUCKETS, add, parse

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from conveyor.app import App


def _task_families() -> tuple[CounterMetricFamily, HistogramMetricFamily, CounterMetricFamily, CounterMetricFamily]:
    return (
        CounterMetricFamily("conveyor_tasks", "Deliveries ended, per task and final state.", labels=["task", "state"]),
        HistogramMetricFamily("conveyor_task_runtime_seconds", "Seconds each task ran.", labels=["task"]),
        CounterMetricFamily("conveyor_received", "Deliveries reserved, per queue.", labels=["queue"]),
        CounterMetricFamily(
            "conveyor_redeliveries",
            "Deliveries of a message handed out before (a crash, a lost lease).",
            labels=["queue"],
        ),
    )


class TaskSeries(Collector):
    """The task series, made at each scrape from a set of counter totals (tally.py).

    Args:
        read: returns the totals: a worker's own (in its supervisor's memory), or the engine's for the
            whole system (``Store.add_counts``; an engine that does not answer yields no task series, and
            ``conveyor_broker_up`` tells the outage).
    """

    def __init__(self, read: Callable[[], Mapping[str, float]]) -> None:
        self.read = read

    def collect(self) -> Iterable[Metric]:
        try:
            counts = self.read()
        except (BrokerError, NotImplementedError):
            return []
        tasks = CounterMetricFamily(
            "conveyor_tasks", "Deliveries ended, per task and final state.", labels=["task", "state"]
        )
        runtime = HistogramMetricFamily("conveyor_task_runtime_seconds", "Seconds each task ran.", labels=["task"])
        received = CounterMetricFamily("conveyor_received", "Deliveries reserved, per queue.", labels=["queue"])
        redeliveries = CounterMetricFamily(
            "conveyor_redeliveries",
            "Deliveries of a message handed out before (a crash, a lost lease).",
            labels=["queue"],
        )
        buckets: dict[str, list[float]] = {}
        sums: dict[str, float] = {}
        for kind, labels, value in parse(counts):
            if kind == "t":
                tasks.add_metric(labels, value)
            elif kind == "b" and labels[1].isdigit() and int(labels[1]) <= len(RUNTIME_BUCKETS):
                buckets.setdefault(labels[0], [0.0] * (len(RUNTIME_BUCKETS) + 1))[int(labels[1])] += value
            elif kind == "s":
                sums[labels[0]] = value
            elif kind == "q":
                received.add_metric(labels, value)
            elif kind == "d":
                redeliveries.add_metric(labels, value)
        for task, per_bucket in buckets.items():
            cumulative = itertools.accumulate(per_bucket)
            bounds = [repr(bound) for bound in RUNTIME_BUCKETS] + ["+Inf"]
            runtime.add_metric([task], list(zip(bounds, cumulative, strict=True)), sums.get(task, 0.0))
        return [tasks, runtime, received, redeliveries]


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
    """A registry with the broker gauges only."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BrokerCollector(app))
    return registry


def dashboard_registry(app: App) -> CollectorRegistry:
    """What the dashboard serves at ``/metrics``: the system's task series from the engine, and the broker gauges."""
    registry = broker_registry(app)
    registry.register(TaskSeries(lambda: app.backend.counts(COUNTS_KEY)))
    return registry


class WorkerMetrics:
    """One worker's metrics: its task series from the totals its supervisor adds up, and the broker gauges."""

    def __init__(self, app: App) -> None:
        self.totals: dict[str, float] = {}
        self.registry = broker_registry(app)
        self.registry.register(TaskSeries(lambda: self.totals))

    def add(self, counts: Mapping[str, float]) -> None:
        """Add a report's counts (tally.py) to this worker's totals."""
        add(self.totals, counts)


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
