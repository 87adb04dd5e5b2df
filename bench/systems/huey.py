"""Huey's driver: calling a task enqueues it; ``huey.enqueue(group([...]))`` batches; ``result.get(blocking=True)``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.systems import IO_THREADS
from bench.systems.base import Driver, Unavailable


class HueyDriver(Driver):
    """Huey on Redis with its multiprocess consumer."""

    batch_note = "huey.enqueue(group([task.s(i) ...])): a loop of single enqueues inside Huey (no batch API)"

    def setup(self) -> None:
        try:
            from bench.systems import huey_tasks
        except ImportError as exc:
            raise Unavailable(str(exc)) from exc
        self.tasks = huey_tasks

    def version(self) -> str:
        import huey

        return str(huey.__version__)

    def describe(self) -> str:
        consumers, kind, workers = self._shape()
        times = f"{consumers} x " if consumers > 1 else ""
        return f"RedisHuey(notify_result=True), {times}huey_consumer -k {kind} -w {workers} -n -q"

    def _shape(self) -> tuple[int, str, int]:
        """(consumer commands, -k, -w) for this workload."""
        if self.config.workload == IO_THREADS:
            return self.config.workers, "thread", self.config.slots
        return 1, "process", self.config.concurrency

    def worker_commands(self) -> list[list[str]]:
        consumers, kind, workers = self._shape()
        cmd = [self.bin("huey_consumer"), "bench.systems.huey_tasks.huey", "-k", kind, "-w", str(workers), "-n", "-q"]
        return [list(cmd) for _ in range(consumers)]

    def enqueue_one(self, kind: str, arg: int) -> Any:
        return getattr(self.tasks, kind)(arg)

    def enqueue_batch(self, kind: str, args: Sequence[int]) -> list[Any]:
        from huey import group

        task = getattr(self.tasks, kind)
        results = self.tasks.huey.enqueue(group([task.s(a) for a in args]))
        return list(results) if results is not None else []

    def wait_result(self, handle: Any, timeout: float) -> Any:
        from huey.exceptions import ResultTimeout

        try:
            return handle.get(blocking=True, timeout=timeout)
        except ResultTimeout as exc:
            raise TimeoutError(str(exc)) from exc


DRIVER = HueyDriver
