"""The worker: ``Worker(app, ...).run()`` is what ``conveyor worker`` runs.

A supervisor process and N children (see ``supervisor.py`` and ``child.py``); each child's pool
(``pools/``: process, thread) runs deliveries through the ``Executor`` (``executor.py``) while a
``LeaseKeeper`` heartbeats them.
"""

from __future__ import annotations

import os

from conveyor.app import App
from conveyor.errors import ConfigurationError
from conveyor.worker import pools
from conveyor.worker.startup import check_reachable
from conveyor.worker.supervisor import Supervisor

__all__ = ["POOLS", "Worker"]

#: Where a worker's slots run: a child process each, threads of one child, or coroutines on its loop (worker/pools/).
POOLS = pools.POOLS


class Worker:
    """A worker serving an app's queues.

    Args:
        app: the app whose tasks run here.
        concurrency: tasks run at once; defaults to the app's ``concurrency`` setting, else the CPU count.
        queues: queues to serve, highest priority first; defaults to the app's default queue.
        pool: ``process`` (default; isolates tasks, survives crashes), ``thread`` (light, for I/O-bound tasks)
            or ``asyncio`` (one event loop running up to ``concurrency`` async tasks at once).
        metrics_port: serve Prometheus ``/metrics`` on this port (bound here, so a taken port fails at once).

    Raises:
        ConfigurationError: a bad pool, concurrency, or a broker that cannot be shared between processes,
            or a metrics port that cannot be bound.
    """

    def __init__(
        self,
        app: App,
        *,
        concurrency: int | None = None,
        queues: list[str] | None = None,
        pool: str = "process",
        metrics_port: int | None = None,
    ) -> None:
        if pool not in POOLS:
            raise ConfigurationError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
        concurrency = concurrency or app.settings.concurrency or os.cpu_count() or 1
        if concurrency < 1:
            raise ConfigurationError(f"concurrency must be at least 1, got {concurrency}")
        if app.settings.broker_url.startswith("memory:"):
            raise ConfigurationError(
                "a memory:// broker lives inside one process, so a worker process cannot reach it; use "
                "sqlite:///path (no server needed) or, in tests, conveyor.testing.drain(app)"
            )
        self.app = app
        self.concurrency = concurrency
        self.queues = tuple(queues or [app.settings.default_queue])
        self.pool = pool
        self.supervisor = Supervisor(
            app, concurrency=concurrency, queues=self.queues, pool=pool, metrics_port=metrics_port
        )

    def run(self) -> int:
        """Check that the broker and backend answer, then serve until stopped by SIGTERM/SIGINT; return the exit code.

        Raises:
            BrokerUnavailable: the broker or the result backend did not answer within the
                ``startup_timeout`` setting (see ``worker/startup.py``); nothing was started.
        """
        check_reachable(self.app, self.app.settings.startup_timeout)
        return self.supervisor.run()
