"""Dramatiq's driver: ``actor.send()``, ``group([...]).run()`` for batches, ``message.get_result(block=True)``."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

from bench.systems import BROKER_URL_ENV, IO_ASYNC, IO_THREADS
from bench.systems._rabbit import Vhost
from bench.systems.base import Driver, DriverConfig, Unavailable


class DramatiqDriver(Driver):
    """Dramatiq with RedisBroker, or (variant ``amqp``) RabbitmqBroker in a fresh vhost; results on Redis."""

    def __init__(self, config: DriverConfig) -> None:
        super().__init__(config)
        self.vhost = Vhost(config.label) if config.variant == "amqp" else None
        if self.vhost is not None:  # read by dramatiq_tasks when it is imported, here and in the workers
            os.environ[BROKER_URL_ENV] = self.vhost.url

    batch_note = "group([actor.message(i) ...]).run(): one enqueue script call per message"

    def setup(self) -> None:
        try:
            from bench.systems import dramatiq_tasks
        except ImportError as exc:
            raise Unavailable(str(exc)) from exc
        self.tasks = dramatiq_tasks

    def version(self) -> str:
        import dramatiq

        return str(dramatiq.__version__)

    def describe(self) -> str:
        processes, threads = self._shape()
        extra = ", AsyncIO middleware" if self.config.workload == IO_ASYNC else ""
        broker = "RabbitmqBroker (pika, publisher confirms off), Redis results" if self.vhost else "RedisBroker"
        return f"{broker}, {processes} processes x {threads} threads, Results(RedisBackend) for echo{extra}"

    def _shape(self) -> tuple[int, int]:
        if self.config.workload in (IO_THREADS, IO_ASYNC):
            return self.config.workers, self.config.slots
        return self.config.concurrency, 1

    def worker_env(self) -> dict[str, str]:
        env = {"BENCH_DRAMATIQ_ASYNCIO": "1"} if self.config.workload == IO_ASYNC else {}
        if self.vhost is not None:
            env[BROKER_URL_ENV] = self.vhost.url
        return env

    def worker_commands(self) -> list[list[str]]:
        processes, threads = self._shape()
        module = "bench.systems.dramatiq_tasks"
        return [[self.bin("dramatiq"), module, "--processes", str(processes), "--threads", str(threads)]]

    def enqueue_one(self, kind: str, arg: int) -> Any:
        return getattr(self.tasks, kind).send(arg)

    def enqueue_batch(self, kind: str, args: Sequence[int]) -> list[Any]:
        from dramatiq import group

        actor = getattr(self.tasks, kind)
        messages = [actor.message(a) for a in args]
        group(messages).run()
        return messages

    def wait_result(self, handle: Any, timeout: float) -> Any:
        from dramatiq.results import ResultTimeout

        try:
            # The Redis backend blocks in whole seconds (BRPOPLPUSH), waking as soon as the result lands.
            return handle.get_result(block=True, timeout=max(1000, math.ceil(timeout) * 1000))
        except ResultTimeout as exc:
            raise TimeoutError(str(exc)) from exc

    def close(self) -> None:
        tasks = getattr(self, "tasks", None)
        if tasks is not None:
            tasks.broker.close()
        if self.vhost is not None:
            self.vhost.delete()


DRIVER = DramatiqDriver
