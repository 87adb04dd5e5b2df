"""arq's driver: ``pool.enqueue_job()`` (no batch API: a loop), ``job.result(timeout=, poll_delay=)``.

arq's client is asyncio-only; the driver keeps one event loop and runs each call on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from bench.systems import IO_ASYNC, WEB
from bench.systems.base import Driver, Unavailable

#: The web workload's worker: one arq process running this many jobs at once (as conveyor's -c 1000).
WEB_MAX_JOBS = 1000


class ArqDriver(Driver):
    """arq: asyncio workers polling a Redis sorted set."""

    batch_note = "loop of pool.enqueue_job() in one coroutine (no batch API)"
    web_app = "bench.systems.arq_web:api"

    def setup(self) -> None:
        try:
            from arq import create_pool

            from bench.systems import arq_tasks
        except ImportError as exc:
            raise Unavailable(str(exc)) from exc
        self.tasks = arq_tasks
        self.runner = asyncio.Runner()
        self.pool = self.runner.run(create_pool(arq_tasks.redis_settings(), default_queue_name=arq_tasks.QUEUE))

    def version(self) -> str:
        from importlib.metadata import version

        return version("arq")

    def describe(self) -> str:
        processes, max_jobs = self._shape()
        return (
            f"{processes} process{'es' if processes > 1 else ''} x max_jobs={max_jobs} (asyncio; sleepy awaits), "
            f"poll_delay={self.tasks.POLL_DELAY:g}s, logging WARNING"
        )

    def _shape(self) -> tuple[int, int]:
        """(worker processes, max_jobs) for this workload."""
        if self.config.workload == IO_ASYNC:
            return self.config.workers, self.config.slots
        if self.config.workload == WEB:
            return 1, WEB_MAX_JOBS
        return self.config.concurrency, self.tasks.MAX_JOBS

    def worker_env(self) -> dict[str, str]:
        return {"BENCH_ARQ_MAX_JOBS": str(self._shape()[1])}

    def worker_commands(self) -> list[list[str]]:
        import sys

        workers = [[sys.executable, "-m", "bench.systems.arq_tasks"] for _ in range(self._shape()[0])]
        return [*workers, self.web_server_command()] if self.config.workload == WEB else workers

    def enqueue_one(self, kind: str, arg: int) -> Any:
        return self.runner.run(self.pool.enqueue_job(kind, arg))

    def enqueue_batch(self, kind: str, args: Sequence[int]) -> list[Any]:
        async def loop() -> list[Any]:
            return [await self.pool.enqueue_job(kind, a) for a in args]

        return self.runner.run(loop())

    def wait_result(self, handle: Any, timeout: float) -> Any:
        try:
            return self.runner.run(handle.result(timeout=timeout, poll_delay=self.tasks.POLL_DELAY))
        except TimeoutError as exc:
            raise TimeoutError(str(exc)) from exc

    def close(self) -> None:
        runner = getattr(self, "runner", None)
        if runner is not None:
            runner.run(self.pool.aclose())
            runner.close()


DRIVER = ArqDriver
