"""A FastAPI app that hands slow work to conveyor workers and still answers its requests.

Run it from the repository root, beside a worker (see ``tasks.py`` and ``README.md`` here)::

    uvicorn examples.fastapi.main:api

Endpoints:

- ``POST /reports?steps=5``: submit a job; ``202 Accepted`` with its id at once.
- ``GET /tasks/{id}``: its state, progress, note, and result or error once finished.
- ``GET /tasks/{id}/events``: Server-Sent Events, one ``progress`` event per change, then ``done``.
- ``POST /square?x=3&timeout=5``: request-response: waits for the result (``504`` after ``timeout``).

Every call awaits conveyor's async API (``adelay``, ``aget``, ``ainfo``, ``aupdates``), so the event
loop serves other requests while a task runs; nothing polls: a waiting request wakes when its result
is written.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import StreamingResponse

from conveyor import ResultTimeout, State, TaskFailed
from conveyor.states import ResultRecord
from examples.fastapi.tasks import app, report, square


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    yield
    await app.aclose()  # the loop's connections, before the loop ends


api = FastAPI(title="conveyor FastAPI example", lifespan=lifespan)


def describe(task_id: str, record: ResultRecord | None) -> dict[str, Any]:
    """The JSON a client sees for a task: state, progress, note, then result or error."""
    if record is None:
        return {"id": task_id, "state": "PENDING", "progress": None, "note": ""}
    body: dict[str, Any] = {"id": task_id, "state": record.state, "progress": record.progress, "note": record.note}
    if record.state is State.SUCCESS:
        body["progress"] = 1.0
        body["result"] = record.value
    elif record.error is not None:
        body["error"] = f"{record.error.type}: {record.error.message}"
    return body


@api.post("/reports", status_code=202)
async def submit_report(
    steps: int = Query(5, ge=1, le=100), seconds: float = Query(0.5, ge=0, le=60)
) -> dict[str, str]:
    """Submit a long job: answered at once with the id to follow it by."""
    result = await report.adelay(steps, seconds)
    return {"id": result.id, "status": f"/tasks/{result.id}", "events": f"/tasks/{result.id}/events"}


@api.get("/tasks/{task_id}")
async def status(task_id: str) -> dict[str, Any]:
    """Where a task is: its state and progress, and its result once it finished."""
    return describe(task_id, await app.result(task_id).ainfo())


@api.get("/tasks/{task_id}/events")
async def events(task_id: str) -> StreamingResponse:
    """Stream a task's progress as Server-Sent Events until it finishes (``event: done`` last)."""

    async def stream() -> AsyncIterator[str]:
        async for record in app.result(task_id).aupdates():
            kind = "done" if record.state.final else "progress"
            yield f"event: {kind}\ndata: {json.dumps(describe(task_id, record))}\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@api.post("/square")
async def square_now(x: float, timeout: float = Query(5.0, gt=0, le=60), seconds: float = 0.05) -> dict[str, Any]:
    """Request-response: send the task and wait for its result, up to ``timeout`` seconds (504 after)."""
    result = await square.adelay(x, seconds)
    try:
        value = await result.aget(timeout=timeout)
    except ResultTimeout:
        raise HTTPException(504, detail={"id": result.id, "error": f"no result within {timeout:g} s"}) from None
    except TaskFailed as exc:
        raise HTTPException(500, detail={"id": result.id, "error": str(exc)}) from None
    return {"id": result.id, "result": value}
