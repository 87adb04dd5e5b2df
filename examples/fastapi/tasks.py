"""The tasks of the FastAPI example: what the web app hands to workers.

Run a worker for them from the repository root (asyncio pool: one event loop runs many at once)::

    conveyor worker examples.fastapi.tasks:app --pool asyncio -c 200

The broker is the embedded default (``sqlite:///conveyor.db`` in the current directory) unless
``CONVEYOR_BROKER_URL`` names another, e.g. ``redis://localhost:6379/0``; the web app and the worker
must use the same one.
"""

from __future__ import annotations

import asyncio

from conveyor import App, current_context

app = App("web-example")


@app.task
async def square(x: float, seconds: float = 0.05) -> float:
    """Square ``x`` after awaiting ``seconds`` (stands for an HTTP call, a model, a database)."""
    await asyncio.sleep(seconds)
    return x * x


@app.task
async def report(steps: int, seconds: float = 0.5) -> str:
    """A long job that reports its progress after each of ``steps`` steps."""
    for step in range(1, steps + 1):
        await asyncio.sleep(seconds)
        current_context().progress(step / steps, note=f"step {step} of {steps}")
    return f"report of {steps} steps ready"
