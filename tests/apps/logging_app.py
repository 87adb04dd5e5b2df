"""An app whose tasks log the way users do: ``logging.getLogger(__name__)``, ``get_task_logger`` and
``warnings.warn`` (tests/e2e/test_logging.py reads them in the worker's output)."""

from __future__ import annotations

import asyncio
import logging
import warnings

from conveyor import App, get_task_logger

app = App("logs")

logger = logging.getLogger(__name__)
task_logger = get_task_logger(__name__)


@app.task(name="chatty")
def chatty(tag: str) -> str:
    """Log at INFO through a plain logger and a task logger, and warn."""
    logger.info("plain info %s", tag)
    task_logger.warning("task-logger warning %s", tag)
    warnings.warn(f"careful with {tag}", UserWarning, stacklevel=1)
    return tag


@app.task(name="achatty")
async def achatty(tag: str) -> str:
    """The same from a coroutine, with an await between the lines (other coroutines run meanwhile)."""
    logger.info("plain info %s", tag)
    await asyncio.sleep(0.01)
    task_logger.warning("task-logger warning %s", tag)
    warnings.warn(f"careful with {tag}", UserWarning, stacklevel=1)
    return tag
