"""Dramatiq's driver: ``actor.send()``, ``group([...]).run()`` for batches, ``message.get_result(block=True)``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from bench.systems.base import Driver, Unavailable


class DramatiqDriver(Driver):
    """Dramatiq with RedisBroker and the Redis results backend."""

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
        return f"RedisBroker, {self.config.concurrency} processes x 1 thread, Results(RedisBackend) for echo"

    def worker_commands(self) -> list[list[str]]:
        return [
            [
                self.bin("dramatiq"),
                "bench.systems.dramatiq_tasks",
                "--processes",
                str(self.config.concurrency),
                "--threads",
                "1",
            ]
        ]

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


DRIVER = DramatiqDriver
