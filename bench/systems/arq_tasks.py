"""arq's side of the benchmark: async functions; the counter goes through the worker's own Redis pool.

Workers: 2 processes of ``python -m bench.systems.arq_tasks`` (``arq.run_worker(WorkerSettings)``
with logging at WARNING: arq's CLI logs two lines per job at INFO). arq is asyncio-only: each
process runs up to ``max_jobs`` jobs at once (``BENCH_ARQ_MAX_JOBS``, default 10, arq's default)
and the sleepy task awaits ``asyncio.sleep`` instead of blocking. io-async: one process with
``max_jobs`` = 1000 (the driver sets ``BENCH_ARQ_MAX_JOBS``). ``poll_delay`` is lowered from
0.5 s to ``BENCH_ARQ_POLL_DELAY`` (default 0.01 s), since arq polls its queue rather than blocking.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, ClassVar

from arq import func
from arq.connections import RedisSettings
from arq.worker import run_worker

from bench.systems import AIO_WAIT_SECONDS, COUNTER_KEY, REDIS_URL_ENV, SLEEP_SECONDS, WEB_TASK_SECONDS

MAX_JOBS = int(os.environ.get("BENCH_ARQ_MAX_JOBS", "10"))
POLL_DELAY = float(os.environ.get("BENCH_ARQ_POLL_DELAY", "0.01"))
QUEUE = "bench"


def redis_settings() -> RedisSettings:
    """The benchmark's Redis database as arq settings."""
    return RedisSettings.from_dsn(os.environ[REDIS_URL_ENV])


async def noop(ctx: dict[str, Any], i: int) -> None:
    await ctx["redis"].incr(COUNTER_KEY)


async def echo(ctx: dict[str, Any], i: int) -> int:
    await ctx["redis"].incr(COUNTER_KEY)
    return i


async def sleepy(ctx: dict[str, Any], i: int) -> None:
    await asyncio.sleep(SLEEP_SECONDS)
    await ctx["redis"].incr(COUNTER_KEY)


async def aio(ctx: dict[str, Any], i: int) -> None:
    await asyncio.sleep(AIO_WAIT_SECONDS)
    await ctx["redis"].incr(COUNTER_KEY)


async def web(ctx: dict[str, Any], x: int) -> int:
    """The web workload's task: await 50 ms, count, return ``x``."""
    await asyncio.sleep(WEB_TASK_SECONDS)
    await ctx["redis"].incr(COUNTER_KEY)
    return x


class WorkerSettings:
    """What ``arq.run_worker`` reads."""

    functions: ClassVar[list[Any]] = [
        func(noop, keep_result=0),
        echo,
        func(sleepy, keep_result=0),
        func(aio, keep_result=0),
        web,
    ]
    redis_settings = redis_settings()
    queue_name = QUEUE
    max_jobs = MAX_JOBS
    poll_delay = POLL_DELAY
    log_results = False


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    run_worker(WorkerSettings)
