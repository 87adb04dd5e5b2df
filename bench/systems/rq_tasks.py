"""RQ's side of the benchmark: plain functions, run by ``rq worker`` processes.

Workers: 2 ``rq worker -w rq.worker.SimpleWorker --logging_level WARNING`` processes (RQ has no
prefork pool). SimpleWorker runs jobs in the worker process; RQ's default Worker forks a new
process for every job and is several times slower (``BENCH_RQ_WORKER_CLASS`` switches).
"""

from __future__ import annotations

import time

from bench.systems import SLEEP_SECONDS
from bench.systems._counter import incr


def noop(i: int) -> None:
    incr()


def echo(i: int) -> int:
    incr()
    return i


def sleepy(i: int) -> None:
    time.sleep(SLEEP_SECONDS)
    incr()
