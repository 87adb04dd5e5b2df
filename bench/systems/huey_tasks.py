"""Huey's side of the benchmark: ``RedisHuey`` with blocking dequeue and BLPOP result notification.

Consumer: ``huey_consumer bench.systems.huey_tasks.huey -k process -w 2 -n -q`` (multiprocess,
no periodic-task scheduler, minimal logging: no line per task). ``notify_result=True`` is
Huey's documented low-latency result wait (BLPOP instead of polling with back-off).
"""

from __future__ import annotations

import os
import time

from huey import RedisHuey
from redis import ConnectionPool

from bench.systems import IO_BLOCK_SECONDS, REDIS_URL_ENV, SLEEP_SECONDS
from bench.systems._counter import MAX_CONNECTIONS, incr

# Huey's storage shares one redis-py pool among all its workers; redis-py 8 caps a pool at 100
# connections and raises past it, which `-k thread -w 128` (io-threads) reaches: raise the cap.
_pool = ConnectionPool.from_url(os.environ[REDIS_URL_ENV], max_connections=MAX_CONNECTIONS)
huey = RedisHuey("bench", connection_pool=_pool, notify_result=True)


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
