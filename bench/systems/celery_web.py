"""Celery's FastAPI app for the web workload: ``web.delay(x).get()`` in a thread (``asyncio.to_thread``).

Celery's client blocks, so an async app runs it through ``asyncio.to_thread``, on a pool of
WEB_CLIENTS (200) threads set as the loop's default executor at start-up (asyncio's own default is
min(32, CPUs + 4) threads). ``get()`` waits on Celery's Redis result backend (pub/sub). The worker
is ``celery worker -P threads -c 200``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI

from bench.systems import WEB_CLIENTS, WEB_RESULT_TIMEOUT
from bench.systems.celery_tasks import web


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    pool = ThreadPoolExecutor(max_workers=WEB_CLIENTS, thread_name_prefix="to_thread")
    asyncio.get_running_loop().set_default_executor(pool)
    yield
    pool.shutdown(wait=False)


api = FastAPI(lifespan=lifespan)


def _round_trip(x: int) -> int:
    value: int = web.delay(x).get(timeout=WEB_RESULT_TIMEOUT)
    return value


@api.post("/call")
async def call(x: int) -> dict[str, int]:
    """Send the task and wait for its result in a thread, answer it."""
    return {"result": await asyncio.to_thread(_round_trip, x)}
