"""conveyor's driver: ``task.delay()``, ``app.send([...])`` for batches, ``AsyncResult.get()``.

The variant picks the broker: ``redis`` (the benchmark's Redis database) or ``sqlite`` (a fresh
file in the work directory for each run). The completion counter is in Redis either way.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.systems._rabbit import Vhost
from bench.systems.base import Driver, DriverConfig, Unavailable


class ConveyorDriver(Driver):
    """conveyor on Redis, SQLite, or RabbitMQ (a fresh vhost, results on the run's Redis)."""

    batch_note = "app.send([task.message(...) ...]): one broker call per chunk"

    def __init__(self, config: DriverConfig) -> None:
        super().__init__(config)
        self.db_path: Path | None = None
        self.vhost: Vhost | None = None
        self.env = {"CONVEYOR_BACKEND_URL": config.redis_url}
        if config.variant == "amqp":
            self.vhost = Vhost(config.label)
            self.broker_url = self.vhost.url
        elif config.variant == "sqlite":
            self.db_path = config.workdir / f"{config.label}.db"
            self._remove_db()
            self.broker_url = f"sqlite:///{self.db_path}"
        else:
            self.broker_url = config.redis_url
        self.env["CONVEYOR_BROKER_URL"] = self.broker_url
        if config.variant != "amqp":  # results on the broker's engine, as a user would run it
            del self.env["CONVEYOR_BACKEND_URL"]
        # Read by App(...) when the task module is imported, here and in the workers.
        os.environ.update(self.env)

    def setup(self) -> None:
        try:
            from bench.systems import conveyor_tasks

            self.tasks = conveyor_tasks
            app = conveyor_tasks.app
            # Both connect lazily: touch them so a missing broker module shows here, not mid-run.
            _ = app.broker
            _ = app.backend
        except Exception as exc:
            last = traceback.format_exception_only(exc)[-1].strip()
            raise Unavailable(f"{self.broker_url.split(':')[0]} broker: {last}") from exc

    def version(self) -> str:
        import conveyor

        return str(getattr(conveyor, "__version__", "dev"))

    def describe(self) -> str:
        broker = {"sqlite": "SQLite (WAL)", "amqp": "RabbitMQ (pika), Redis results"}.get(self.config.variant, "Redis")
        return (
            f"{broker}; conveyor worker -c {self.config.concurrency} --pool process; "
            "track_started=False, ignore_result on no-result tasks"
        )

    def worker_commands(self) -> list[list[str]]:
        cmd = [self.bin("conveyor")]
        if not Path(cmd[0]).exists():
            cmd = [sys.executable, "-m", "conveyor"]
        app = "bench.systems.conveyor_tasks:app"
        return [[*cmd, "worker", app, "-c", str(self.config.concurrency), "--pool", "process", "--loglevel", "WARNING"]]

    def worker_env(self) -> dict[str, str]:
        return dict(self.env)

    def enqueue_one(self, kind: str, arg: int) -> Any:
        return getattr(self.tasks, kind).delay(arg)

    def enqueue_batch(self, kind: str, args: Sequence[int]) -> list[Any]:
        task = getattr(self.tasks, kind)
        return list(self.tasks.app.send([task.message((a,)) for a in args]))

    def wait_result(self, handle: Any, timeout: float) -> Any:
        return handle.get(timeout=timeout)  # ResultTimeout is a TimeoutError

    def close(self) -> None:
        tasks = getattr(self, "tasks", None)
        if tasks is not None:
            tasks.app.close()
        self._remove_db()
        if self.vhost is not None:
            self.vhost.delete()

    def _remove_db(self) -> None:
        if self.db_path is not None:
            for suffix in ("", "-wal", "-shm"):
                self.db_path.with_name(self.db_path.name + suffix).unlink(missing_ok=True)


DRIVER = ConveyorDriver
