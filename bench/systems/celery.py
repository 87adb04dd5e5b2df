"""Celery's driver: ``task.delay()``, ``group(...).apply_async()`` for batches, ``AsyncResult.get()``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from bench.systems import BROKER_URL_ENV, IO_THREADS, WEB, WEB_CLIENTS
from bench.systems._rabbit import Vhost
from bench.systems.base import Driver, DriverConfig, Unavailable


class CeleryDriver(Driver):
    """Celery with the Redis result backend, and the Redis broker or (variant ``amqp``) RabbitMQ in a fresh vhost."""

    batch_note = "group(task.s(i) ...).apply_async(): one message per task, one producer connection"
    web_app = "bench.systems.celery_web:api"

    def __init__(self, config: DriverConfig) -> None:
        super().__init__(config)
        self.vhost = Vhost(config.label) if config.variant == "amqp" else None
        if self.vhost is not None:  # read by celery_tasks when it is imported, here and in the workers
            os.environ[BROKER_URL_ENV] = self.vhost.url

    def worker_env(self) -> dict[str, str]:
        return {} if self.vhost is None else {BROKER_URL_ENV: self.vhost.url}

    def setup(self) -> None:
        try:
            from bench.systems import celery_tasks
        except ImportError as exc:
            raise Unavailable(str(exc)) from exc
        self.tasks = celery_tasks

    def version(self) -> str:
        import celery

        return str(celery.__version__)

    def describe(self) -> str:
        broker = "RabbitMQ broker (py-amqp), Redis results; " if self.vhost is not None else ""
        workers, pool, concurrency = self._shape()
        times = f"{workers} x " if workers > 1 else ""
        return broker + (
            f"{times}{pool} -c {concurrency}, acks_late=True, prefetch_multiplier={self.tasks.PREFETCH}, "
            f"without gossip/mingle/heartbeat, -l {self.config.log_level}"
        )

    def _shape(self) -> tuple[int, str, int]:
        """(worker commands, -P, -c) for this workload."""
        if self.config.workload == IO_THREADS:
            return self.config.workers, "threads", self.config.slots
        if self.config.workload == WEB:
            return 1, "threads", WEB_CLIENTS
        return 1, "prefork", self.config.concurrency

    def worker_commands(self) -> list[list[str]]:
        workers, pool, concurrency = self._shape()
        server = [self.web_server_command()] if self.config.workload == WEB else []
        return server + [
            [
                self.bin("celery"),
                "-A",
                "bench.systems.celery_tasks:app",
                "worker",
                "-c",
                str(concurrency),
                "-P",
                pool,
                "-l",
                self.config.log_level,
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-n",
                f"bench-{self.config.label}-{i}@%h",
            ]
            for i in range(workers)
        ]

    def enqueue_one(self, kind: str, arg: int) -> Any:
        return getattr(self.tasks, kind).delay(arg)

    def enqueue_batch(self, kind: str, args: Sequence[int]) -> list[Any]:
        from celery import group

        task = getattr(self.tasks, kind)
        return list(group(task.s(a) for a in args).apply_async().results)

    def enqueue_workflow(self, shape: str, n: int) -> Any:
        from celery import chain, chord, group

        t = self.tasks
        if shape == "chord":
            return chord(t.echo.s(i) for i in range(n))(t.total.s())
        if shape == "group":
            return group(t.echo.s(i) for i in range(n)).apply_async()
        return chain(t.step.s(0), *(t.step.s() for _ in range(n - 1))).apply_async()

    def wait_result(self, handle: Any, timeout: float) -> Any:
        from celery.exceptions import TimeoutError as CeleryTimeout

        try:
            return handle.get(timeout=timeout)
        except CeleryTimeout as exc:
            raise TimeoutError(str(exc)) from exc

    def close(self) -> None:
        tasks = getattr(self, "tasks", None)
        if tasks is not None:
            tasks.app.close()
        if self.vhost is not None:
            self.vhost.delete()


DRIVER = CeleryDriver
