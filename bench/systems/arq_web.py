"""arq's FastAPI app for the web workload: ``await pool.enqueue_job("web", x)``, then ``await job.result()``.

arq's client is asyncio-native; ``job.result()`` polls the result key every ``poll_delay`` seconds
(``BENCH_ARQ_POLL_DELAY``, 0.01 s here as in the other arq rows; arq's default is 0.5 s). The worker
is one ``arq`` process with ``max_jobs`` = 1000.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from arq import create_pool
from fastapi import FastAPI

from bench.systems import WEB_RESULT_TIMEOUT
from bench.systems.arq_tasks import POLL_DELAY, QUEUE, redis_settings

state: dict[str, Any] = {}


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    state["pool"] = await create_pool(redis_settings(), default_queue_name=QUEUE)
    yield
    await state["pool"].aclose()


api = FastAPI(lifespan=lifespan)


@api.post("/call")
async def call(x: int) -> dict[str, int]:
    """Send the job, wait for its result, answer it."""
    job = await state["pool"].enqueue_job("web", x)
    value: int = await job.result(timeout=WEB_RESULT_TIMEOUT, poll_delay=POLL_DELAY)
    return {"result": value}
