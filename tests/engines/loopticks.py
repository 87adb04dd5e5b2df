"""Proof that an event loop kept running while a coroutine waited: count its ticks meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

#: Seconds between two ticks.
TICK = 0.01


class Ticks:
    """How many times a ticker coroutine ran (every TICK seconds) while the block ran."""

    count = 0


@contextlib.asynccontextmanager
async def loop_ticks() -> AsyncIterator[Ticks]:
    """Count the loop's ticks during the block: a blocked loop counts (almost) none."""
    ticks = Ticks()

    async def tick() -> None:
        while True:
            await asyncio.sleep(TICK)
            ticks.count += 1

    ticker = asyncio.create_task(tick())
    try:
        yield ticks
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
