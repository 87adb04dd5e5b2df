"""Celery's side of the benchmark, in its fast configuration for short tasks on Redis (or RabbitMQ).

Worker: ``celery -A bench.systems.celery_tasks:app worker -c 2 -P prefork -l WARNING
--without-gossip --without-mingle --without-heartbeat`` (no per-task log lines at WARNING).
io-threads: two such workers with ``-P threads -c 128``.
``task_acks_late=True`` matches conveyor's at-least-once; the prefetch multiplier
(``BENCH_CELERY_PREFETCH``, default 16) is Celery's documented knob for many short tasks.
"""

from __future__ import annotations

import os
import time

from celery import Celery

from bench.systems import BROKER_URL_ENV, IO_BLOCK_SECONDS, REDIS_URL_ENV, SLEEP_SECONDS, WEB_TASK_SECONDS
from bench.systems._counter import incr

PREFETCH = int(os.environ.get("BENCH_CELERY_PREFETCH", "16"))
_url = os.environ[REDIS_URL_ENV]

# The celery-amqp variant sets BENCH_BROKER_URL to its RabbitMQ vhost; results stay on Redis.
app = Celery("bench", broker=os.environ.get(BROKER_URL_ENV) or _url, backend=_url)
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=PREFETCH,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_expires=3600,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=True,
    task_default_queue="bench",
)


@app.task(ignore_result=True)
def noop(i: int) -> None:
    incr()


@app.task
def echo(i: int) -> int:
    incr()
    return i


@app.task
def total(values: list[int]) -> int:
    return sum(values)


@app.task
def step(x: int) -> int:
    return x + 1


@app.task(ignore_result=True)
def sleepy(i: int) -> None:
    time.sleep(SLEEP_SECONDS)
    incr()


@app.task(ignore_result=True)
def io(i: int) -> None:
    time.sleep(IO_BLOCK_SECONDS)
    incr()


@app.task
def web(x: int) -> int:
    """The web workload's task: sleep 50 ms (its -P threads slot), count, return ``x``."""
    time.sleep(WEB_TASK_SECONDS)
    incr()
    return x
