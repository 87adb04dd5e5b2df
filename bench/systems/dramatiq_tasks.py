"""Dramatiq's side of the benchmark: RedisBroker, Results middleware on Redis for ``echo`` only.

Worker: ``dramatiq bench.systems.dramatiq_tasks -p 2 -t 1`` (2 processes of one thread each: two
tasks at once, like every other system; Dramatiq logs no line per task).
"""

from __future__ import annotations

import os
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends.redis import RedisBackend

from bench.systems import REDIS_URL_ENV, SLEEP_SECONDS
from bench.systems._counter import incr

_url = os.environ[REDIS_URL_ENV]

broker = RedisBroker(url=_url)
broker.add_middleware(Results(backend=RedisBackend(url=_url)))
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="bench", max_retries=0)
def noop(i: int) -> None:
    incr()


@dramatiq.actor(queue_name="bench", max_retries=0, store_results=True)
def echo(i: int) -> int:
    incr()
    return i


@dramatiq.actor(queue_name="bench", max_retries=0)
def sleepy(i: int) -> None:
    time.sleep(SLEEP_SECONDS)
    incr()
