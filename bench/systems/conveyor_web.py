"""conveyor's FastAPI app for the web workload: ``await web.adelay(x)``, then ``await result.aget()``.

Served by ``uvicorn bench.systems.conveyor_web:api`` (one process); the worker is ``conveyor worker
bench.systems.conveyor_tasks:app --pool asyncio -c 1000``. The result wakes the request the moment it
is written (Redis: a blocking pop on the loop, no thread, no polling).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException

from bench.systems import WEB_RESULT_TIMEOUT
from bench.systems.conveyor_tasks import app, web
from conveyor import ResultTimeout


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    yield
    await app.aclose()


api = FastAPI(lifespan=lifespan)


@api.post("/call")
async def call(x: int) -> dict[str, int]:
    """Send the task, wait for its result, answer it."""
    result = await web.adelay(x)
    try:
        return {"result": await result.aget(timeout=WEB_RESULT_TIMEOUT)}
    except ResultTimeout as exc:
        raise HTTPException(504, str(exc)) from None
