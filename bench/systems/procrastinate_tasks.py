"""Procrastinate's side of the benchmark: the three tasks on an app whose database comes from the environment.

The worker is ``procrastinate --app=bench.systems.procrastinate_tasks.app worker -c 2 --delete-jobs successful``
(one process; sync tasks run in threads; LISTEN/NOTIFY on). Procrastinate keeps no task results, so
``echo`` only counts: the driver waits for the job to finish (its row is deleted on success).
"""

from __future__ import annotations

import os
import time

import procrastinate

from bench.systems import SLEEP_SECONDS
from bench.systems._counter import incr
from bench.systems._postgres import POSTGRES_URL_ENV

#: The run's database (set by the driver, for itself and the worker).
DATABASE_ENV = "BENCH_PROCRASTINATE_DB"

app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=os.environ.get(DATABASE_ENV, "")))


@app.task(name="noop")
def noop(i: int) -> None:
    incr()


@app.task(name="echo")
def echo(i: int) -> int:
    incr()
    return i


@app.task(name="sleepy")
def sleepy(i: int) -> None:
    time.sleep(SLEEP_SECONDS)
    incr()


__all__ = ["DATABASE_ENV", "POSTGRES_URL_ENV", "app"]
