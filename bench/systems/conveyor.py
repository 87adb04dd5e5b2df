"""conveyor's driver: ``task.delay()``, ``app.send([...])`` for batches, ``AsyncResult.get()``.

The variant picks the broker: ``redis`` (the benchmark's Redis database), ``sqlite`` (a fresh
file in the work directory for each run), ``amqp`` or ``postgres`` (a fresh database on the server
``BENCH_POSTGRES_URL`` names, migrated; results there too). The completion counter is in Redis either way.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.systems import IO_ASYNC, IO_THREADS, WEB
from bench.systems._rabbit import Vhost
from bench.systems.base import REPO_ROOT, Driver, DriverConfig, Unavailable

APP = "bench.systems.conveyor_tasks:app"
#: The web workload's worker: one asyncio-pool worker with this many slots (as arq's max_jobs).
WEB_ASYNC_SLOTS = 1000


class ConveyorDriver(Driver):
    """conveyor on Redis, SQLite, or RabbitMQ (a fresh vhost, results on the run's Redis)."""

    batch_note = "app.send([task.message(...) ...]): one broker call per chunk"
    web_app = "bench.systems.conveyor_web:api"

    def __init__(self, config: DriverConfig) -> None:
        super().__init__(config)
        self.db_path: Path | None = None
        self.vhost: Vhost | None = None
        self.database: Any = None
        self.env = {"CONVEYOR_BACKEND_URL": config.redis_url}
        if config.variant == "postgres":
            from bench.systems._postgres import Database
            from conveyor.brokers.postgres.migrate import migrate

            self.database = Database(config.label)
            migrate(self.database.url, "conveyor")
            self.broker_url = self.database.url
        elif config.variant == "amqp":
            self.vhost = Vhost(config.label)
            self.broker_url = self.vhost.url
        elif config.variant == "sqlite":
            self.db_path = config.workdir / f"{config.label}.db"
            self._remove_db()
            self.broker_url = f"sqlite:///{self.db_path}"
        else:
            self.broker_url = config.redis_url
        self.env["CONVEYOR_BROKER_URL"] = self.broker_url
        # Events are on by default; the redis-noevents row turns them off to price them (docs/observability.md).
        self.env["CONVEYOR_EVENTS"] = "false" if config.variant == "redis-noevents" else "true"
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
        broker = {
            "sqlite": "SQLite (WAL)",
            "amqp": "RabbitMQ (pika), Redis results",
            "postgres": "PostgreSQL (psycopg 3, LISTEN/NOTIFY), results in PostgreSQL",
            "redis-noevents": "Redis, events=False",
        }.get(self.config.variant, "Redis")
        workers, concurrency, pool = self._shape()
        times = f"{workers} x " if workers > 1 else ""
        return (
            f"{broker}; {times}conveyor worker -c {concurrency} --pool {pool} --loglevel {self.config.log_level}; "
            f"track_started=False, ignore_result on no-result tasks{_source()}"
        )

    def notice(self) -> str:
        if self.config.workload == IO_ASYNC and not _has_asyncio_pool():
            return (
                "FALLBACK: this conveyor has no --pool asyncio; ran --pool thread "
                f"-c {self.config.slots} (each thread runs one async task at a time on its own loop)"
            )
        return ""

    def worker_commands(self) -> list[list[str]]:
        workers, concurrency, pool = self._shape()
        cmd = [*_conveyor(self.bin("conveyor")), "worker", APP, "-c", str(concurrency), "--pool", pool]
        workers_cmds = [[*cmd, "--loglevel", self.config.log_level] for _ in range(workers)]
        return [*workers_cmds, self.web_server_command()] if self.config.workload == WEB else workers_cmds

    def _shape(self) -> tuple[int, int, str]:
        """(worker commands, -c, --pool) for this workload."""
        if self.config.workload == IO_THREADS:
            return self.config.workers, self.config.slots, "thread"
        if self.config.workload == IO_ASYNC:
            return self.config.workers, self.config.slots, "asyncio" if _has_asyncio_pool() else "thread"
        if self.config.workload == WEB:
            return 1, WEB_ASYNC_SLOTS, "asyncio"
        return 1, self.config.concurrency, "process"

    def worker_env(self) -> dict[str, str]:
        return dict(self.env)

    def enqueue_one(self, kind: str, arg: int) -> Any:
        return getattr(self.tasks, kind).delay(arg)

    def enqueue_batch(self, kind: str, args: Sequence[int]) -> list[Any]:
        task = getattr(self.tasks, kind)
        return list(self.tasks.app.send([task.message((a,)) for a in args]))

    def enqueue_workflow(self, shape: str, n: int) -> Any:
        try:
            from conveyor import chain, chord, group
        except ImportError as exc:  # a conveyor from before issue 17 (--conveyor-src)
            raise Unavailable(f"this conveyor has no workflows: {exc}") from exc
        t = self.tasks
        if shape == "chord":
            return chord([t.echo.s(i) for i in range(n)], t.total.s()).apply_async()
        if shape == "group":
            return group(t.echo.s(i) for i in range(n)).apply_async()
        return chain(t.step.s(0), *(t.step.s() for _ in range(n - 1))).apply_async()

    def wait_result(self, handle: Any, timeout: float) -> Any:
        return handle.get(timeout=timeout)  # ResultTimeout is a TimeoutError

    def per_call_seconds(self, n: int) -> dict[str, float]:
        """Seconds per ``noop.delay(i)`` and per ``await noop.adelay(i)``, n sequential calls each (no worker)."""
        import asyncio
        import time

        task = self.tasks.noop
        task.delay(0)  # connect and register the queue outside the timing
        start = time.perf_counter()
        for i in range(n):
            task.delay(i)
        sync = (time.perf_counter() - start) / n

        async def calls() -> float:
            await task.adelay(0)
            begin = time.perf_counter()
            for i in range(n):
                await task.adelay(i)
            elapsed = time.perf_counter() - begin
            await self.tasks.app.aclose()
            return elapsed / n

        return {"delay_s": sync, "adelay_s": asyncio.run(calls())}

    def close(self) -> None:
        tasks = getattr(self, "tasks", None)
        if tasks is not None:
            tasks.app.close()
        self._remove_db()
        if self.vhost is not None:
            self.vhost.delete()
        if self.database is not None:
            self.database.drop()

    def _remove_db(self) -> None:
        if self.db_path is not None:
            for suffix in ("", "-wal", "-shm"):
                self.db_path.with_name(self.db_path.name + suffix).unlink(missing_ok=True)


def _source() -> str:
    """``; conveyor from DIR`` when conveyor is not this checkout's (``--conveyor-src``), else nothing."""
    import conveyor

    where = Path(conveyor.__file__).resolve().parents[1]
    return "" if where == REPO_ROOT / "src" else f"; conveyor from {where}"


def _conveyor(script: str) -> list[str]:
    """The ``conveyor`` command of this interpreter (the console script, else ``python -m conveyor``)."""
    return [script] if Path(script).exists() else [sys.executable, "-m", "conveyor"]


@functools.cache
def _has_asyncio_pool() -> bool:
    """Whether ``conveyor worker --pool`` offers ``asyncio`` (asked of the CLI, not of internal names)."""
    script = str(Path(sys.executable).parent / "conveyor")
    out = subprocess.run(
        [*_conveyor(script), "worker", "--help"], capture_output=True, text=True, timeout=60, check=False
    ).stdout
    pool_lines = [line for line in out.splitlines() if "--pool" in line]
    return any("asyncio" in line for line in pool_lines)


DRIVER = ConveyorDriver
