"""Procrastinate's driver: ``task.defer()``, ``task.batch_defer()``, and a wait on the job's row.

Procrastinate is the PostgreSQL-only peer: it runs on the same server as ``conveyor-postgres``, in a
database of its own per run with its schema applied. It stores no results, so ``wait_result`` polls
the job's row every millisecond until it is gone (deleted on success) or failed, and returns the
argument (the value ``echo`` would return).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.systems.base import Driver, DriverConfig, Unavailable

#: Seconds between two looks at a job's row while waiting for it.
POLL = 0.001


class ProcrastinateDriver(Driver):
    """Procrastinate: one asyncio worker process, sync tasks in threads, LISTEN/NOTIFY wake-ups."""

    batch_note = "task.batch_defer(...): one INSERT per chunk"

    def __init__(self, config: DriverConfig) -> None:
        super().__init__(config)
        self.database: Any = None

    def setup(self) -> None:
        try:
            import psycopg

            from bench.systems._postgres import Database
        except ImportError as exc:
            raise Unavailable(str(exc)) from exc
        self.database = Database(self.config.label)
        os.environ["BENCH_PROCRASTINATE_DB"] = self.database.url
        try:
            from bench.systems import procrastinate_tasks
        except ImportError as exc:
            raise Unavailable(str(exc)) from exc
        self.tasks = procrastinate_tasks
        self.tasks.app.open()
        self.tasks.app.schema_manager.apply_schema()
        self.status = psycopg.connect(self.database.url, autocommit=True)

    def version(self) -> str:
        from importlib.metadata import version

        return version("procrastinate")

    def describe(self) -> str:
        return (
            f"1 process, worker -c {self.config.concurrency} (asyncio; sync tasks in threads), LISTEN/NOTIFY, "
            "--delete-jobs successful; no result store: a round trip waits for the job row (1 ms polls)"
        )

    def worker_env(self) -> dict[str, str]:
        return {"BENCH_PROCRASTINATE_DB": self.database.url}

    def worker_commands(self) -> list[list[str]]:
        script = self.bin("procrastinate")
        base = [script] if Path(script).exists() else [sys.executable, "-m", "procrastinate"]
        app = "--app=bench.systems.procrastinate_tasks.app"
        return [[*base, app, "worker", "-c", str(self.config.concurrency), "--delete-jobs", "successful"]]

    def enqueue_one(self, kind: str, arg: int) -> Any:
        return (getattr(self.tasks, kind).defer(i=arg), arg)

    def enqueue_batch(self, kind: str, args: Sequence[int]) -> list[Any]:
        ids = getattr(self.tasks, kind).batch_defer(*({"i": a} for a in args))
        return list(zip(ids, args, strict=True))

    def wait_result(self, handle: Any, timeout: float) -> Any:
        job_id, arg = handle
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = self.status.execute("SELECT status FROM procrastinate_jobs WHERE id = %s", (job_id,)).fetchone()
            if row is None or row[0] == "succeeded":
                return arg
            if row[0] in {"failed", "cancelled", "aborted"}:
                raise RuntimeError(f"job {job_id} {row[0]}")
            time.sleep(POLL)
        raise TimeoutError(f"job {job_id} not done within {timeout} s")

    def close(self) -> None:
        tasks = getattr(self, "tasks", None)
        if tasks is not None:
            tasks.app.close()
        status = getattr(self, "status", None)
        if status is not None:
            status.close()
        if self.database is not None:
            self.database.drop()


DRIVER = ProcrastinateDriver
