"""RQ's driver: ``queue.enqueue()``, ``queue.enqueue_many()`` for batches, ``job.latest_result(timeout=)``."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

from bench.systems.base import Driver, Unavailable

WORKER_CLASS = os.environ.get("BENCH_RQ_WORKER_CLASS", "rq.worker.SimpleWorker")
QUEUE = "bench"


class RQDriver(Driver):
    """RQ: one ``rq worker`` process per slot."""

    batch_note = "queue.enqueue_many([Queue.prepare_data(...) ...]): one Redis pipeline per chunk"

    def setup(self) -> None:
        try:
            from redis import Redis
            from rq import Queue

            from bench.systems import rq_tasks
        except ImportError as exc:
            raise Unavailable(str(exc)) from exc
        self.tasks = rq_tasks
        self.redis = Redis.from_url(self.config.redis_url)
        self.queue = Queue(QUEUE, connection=self.redis)

    def version(self) -> str:
        import rq

        return str(rq.__version__)

    def describe(self) -> str:
        return f"{self.config.concurrency} x rq worker -w {WORKER_CLASS.rsplit('.', 1)[-1]}, --logging_level WARNING"

    def worker_commands(self) -> list[list[str]]:
        return [
            [
                self.bin("rq"),
                "worker",
                "-u",
                self.config.redis_url,
                "-w",
                WORKER_CLASS,
                "--logging_level",
                "WARNING",
                "--disable-job-desc-logging",
                "-n",
                f"bench-{self.config.label}-{i}",
                QUEUE,
            ]
            for i in range(self.config.concurrency)
        ]

    @staticmethod
    def _result_ttl(kind: str) -> int:
        return 500 if kind == "echo" else 0  # 0: the job keeps no result

    def enqueue_one(self, kind: str, arg: int) -> Any:
        return self.queue.enqueue(getattr(self.tasks, kind), arg, result_ttl=self._result_ttl(kind))

    def enqueue_batch(self, kind: str, args: Sequence[int]) -> list[Any]:
        from rq import Queue

        func = getattr(self.tasks, kind)
        ttl = self._result_ttl(kind)
        return list(self.queue.enqueue_many([Queue.prepare_data(func, (a,), result_ttl=ttl) for a in args]))

    def wait_result(self, handle: Any, timeout: float) -> Any:
        # Blocks on the job's result stream (XREAD BLOCK, whole seconds), waking when the result lands.
        result = handle.latest_result(timeout=max(1, math.ceil(timeout)))
        if result is None:
            raise TimeoutError(f"no result for job {handle.id} within {timeout:.0f} s")
        return result.return_value

    def close(self) -> None:
        redis = getattr(self, "redis", None)
        if redis is not None:
            redis.close()


DRIVER = RQDriver
