"""conveyor's side of the benchmark: the three tasks, on an app whose broker comes from the environment.

The worker is ``conveyor worker bench.systems.conveyor_tasks:app -c 2 --pool process --loglevel WARNING``;
``CONVEYOR_BROKER_URL`` (set by the driver) picks Redis or SQLite. Results live on the broker's
engine (the default). ``track_started=False`` (one result write per task, as the peers do) and
``ignore_result=True`` on the tasks whose result nobody reads are the fast configuration.
"""

from __future__ import annotations

import time

from bench.systems import SLEEP_SECONDS
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


@app.task(ignore_result=True)
def sleepy(i: int) -> None:
    """Sleep (blocking the slot), then count."""
    time.sleep(SLEEP_SECONDS)
    incr()
