"""Dramatiq's side of the benchmark: RedisBroker or (dramatiq-amqp) RabbitmqBroker; Results on Redis for ``echo``.

Worker: ``dramatiq bench.systems.dramatiq_tasks -p 2 -t 1`` (2 processes of one thread each: two
tasks at once, like every other system; Dramatiq logs no line per task). io-threads: ``-p 2 -t 128``.
io-async: ``-p 1 -t 1000`` with the AsyncIO middleware (``BENCH_DRAMATIQ_ASYNCIO=1``, set by the
driver for that workload only): each worker thread waits on one coroutine run by the middleware's
event loop thread, so 1000 threads give 1000 awaits at once.
"""

from __future__ import annotations

import asyncio
import os
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AsyncIO
from dramatiq.results import Results
from dramatiq.results.backends.redis import RedisBackend

from bench.systems import AIO_WAIT_SECONDS, BROKER_URL_ENV, IO_BLOCK_SECONDS, REDIS_URL_ENV, SLEEP_SECONDS
from bench.systems._counter import incr

#: Set to 1 by the driver for io-async: adds the AsyncIO middleware (an event loop thread per process).
ASYNCIO_ENV = "BENCH_DRAMATIQ_ASYNCIO"

_url = os.environ[REDIS_URL_ENV]

# The dramatiq-amqp variant sets BENCH_BROKER_URL to its RabbitMQ vhost; results stay on Redis.
if os.environ.get(BROKER_URL_ENV):
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker: dramatiq.Broker = RabbitmqBroker(url=os.environ[BROKER_URL_ENV])
else:
    broker = RedisBroker(url=_url)
broker.add_middleware(Results(backend=RedisBackend(url=_url)))
if os.environ.get(ASYNCIO_ENV) == "1":
    broker.add_middleware(AsyncIO())
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


@dramatiq.actor(queue_name="bench", max_retries=0)
def io(i: int) -> None:
    time.sleep(IO_BLOCK_SECONDS)
    incr()


@dramatiq.actor(queue_name="bench", max_retries=0)
async def aio(i: int) -> None:
    await asyncio.sleep(AIO_WAIT_SECONDS)
    incr()
