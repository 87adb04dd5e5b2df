"""One event loop per thread, for async tasks run by the synchronous ``Executor.run``.

A process or thread slot runs an ``async def`` task with ``loop.run_until_complete`` on a loop
of its own, made on first use and reused for every later async task of that thread (a new loop
per task would cost more than most tasks). The asyncio pool does not use these: it awaits tasks
on its own running loop (``Executor.arun``).
"""

from __future__ import annotations

import asyncio
import threading


class ThreadLoops:
    """Hands each thread its own event loop; :meth:`close` closes every one made."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._made: list[asyncio.AbstractEventLoop] = []
        self._lock = threading.Lock()

    def get(self) -> asyncio.AbstractEventLoop:
        """The calling thread's loop (created on first use)."""
        loop: asyncio.AbstractEventLoop | None = getattr(self._local, "loop", None)
        if loop is None:
            loop = self._local.loop = asyncio.new_event_loop()
            with self._lock:
                self._made.append(loop)
        return loop

    def close(self) -> None:
        """Close every loop made (call once no thread runs a task any more)."""
        with self._lock:
            made, self._made = self._made, []
        for loop in made:
            loop.close()
        self._local = threading.local()
