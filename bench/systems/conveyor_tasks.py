"""conveyor's side of the benchmark: the three tasks, on an app whose broker comes from the environment.

The worker is ``conveyor worker bench.systems.conveyor_tasks:app -c 2 --pool process --loglevel WARNING``
(io-threads: ``-c 128 --pool thread``, two of them; io-async: ``-c 1000 --pool asyncio``);
``CONVEYOR_BROKER_URL`` (set by the driver) picks Redis or SQLite. Results live on the broker's
engine (the default). ``track_started=False`` (one result write per task, as the peers do) and
``ignore_result=True`` on the tasks whose result nobody reads are the fast configuration.
"""

from __future__ import annotations

import asyncio
import time

from bench.systems import AIO_WAIT_SECONDS, IO_BLOCK_SECONDS, SLEEP_SECONDS, WEB_TASK_SECONDS
from bench.systems._counter import incr
from conveyor import App

app = App("bench", track_started=False, log_level="WARNING")


@app.task(ignore_result=True)
def noop(i: int) -> None:
    """Count and return nothing."""
    incr()


@app.task
def echo(i: int) -> int:
    """Count and return the argument (the producer checks it)."""
    incr()
    return i


@app.task
def total(values: list[int]) -> int:
    """A chord's body: the sum of its members' results."""
    return sum(values)


@app.task
def step(x: int) -> int:
    """A chain's step: one more than its predecessor."""
    return x + 1


@app.task(ignore_result=True)
def sleepy(i: int) -> None:
    """Sleep (blocking the slot), then count."""
    time.sleep(SLEEP_SECONDS)
    incr()


@app.task(ignore_result=True)
def io(i: int) -> None:
    """Block the thread 20 ms (a call to another service), then count."""
    time.sleep(IO_BLOCK_SECONDS)
    incr()


@app.task(ignore_result=True)
async def aio(i: int) -> None:
    """Await 1 s (an LLM call), then count (a blocking INCR of some 50 us: cheap next to the wait)."""
    await asyncio.sleep(AIO_WAIT_SECONDS)
    incr()


@app.task
async def web(x: int) -> int:
    """The web workload's task: await 50 ms (a call to another service), count, return ``x``."""
    await asyncio.sleep(WEB_TASK_SECONDS)
    incr()
    return x
