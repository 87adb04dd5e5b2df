"""Huey's side of the benchmark: ``RedisHuey`` with blocking dequeue and BLPOP result notification.

Consumer: ``huey_consumer bench.systems.huey_tasks.huey -k process -w 2 -n -q`` (multiprocess,
no periodic-task scheduler, minimal logging: no line per task). ``notify_result=True`` is
Huey's documented low-latency result wait (BLPOP instead of polling with back-off).
"""

from __future__ import annotations

import os
import time

from huey import RedisHuey

from bench.systems import IO_BLOCK_SECONDS, REDIS_URL_ENV, SLEEP_SECONDS
from bench.systems._counter import incr

huey = RedisHuey("bench", url=os.environ[REDIS_URL_ENV], notify_result=True)


@huey.task()
def noop(i: int) -> None:
    incr()  # returns None: Huey stores no result


@huey.task()
def echo(i: int) -> int:
    incr()
    return i


@huey.task()
def sleepy(i: int) -> None:
    time.sleep(SLEEP_SECONDS)
    incr()


@huey.task()
def io(i: int) -> None:
    time.sleep(IO_BLOCK_SECONDS)
    incr()
