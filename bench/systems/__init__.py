"""The systems the harness knows, and the constants their task modules and drivers share.

Standard library only: this module is imported in every peer's venv.
"""

from __future__ import annotations

import dataclasses

#: The Redis key every task of every system increments once when it has run.
COUNTER_KEY = "bench:done"
#: How long a "sleepy" task of the mixed workload sleeps.
SLEEP_SECONDS = 1.0
#: Environment variable naming the Redis URL (with its database) of the counter, for worker processes.
REDIS_URL_ENV = "BENCH_REDIS_URL"
#: Environment variable naming the broker URL when it is not the Redis one (the ``amqp`` variants).
BROKER_URL_ENV = "BENCH_BROKER_URL"


@dataclasses.dataclass(frozen=True)
class SystemSpec:
    """One row of the tables.

    Attributes:
        name: the name on the command line and in the tables.
        module: ``bench.systems.<module>`` holds its ``Driver`` class.
        venv: the peer venv under ``bench/.venvs`` its driver runs in; None for conveyor (the
            interpreter running the harness, where conveyor is installed).
        variant: passed to the driver (conveyor's broker: ``redis``, ``sqlite`` or ``amqp``; Celery's:
            ``amqp`` for RabbitMQ as its broker, results on the run's Redis either way).
    """

    name: str
    module: str
    venv: str | None
    variant: str = ""


SYSTEMS: dict[str, SystemSpec] = {
    spec.name: spec
    for spec in (
        SystemSpec("conveyor-redis", "conveyor", None, "redis"),
        SystemSpec("conveyor-sqlite", "conveyor", None, "sqlite"),
        SystemSpec("conveyor-amqp", "conveyor", None, "amqp"),
        SystemSpec("celery", "celery", "celery"),
        SystemSpec("celery-amqp", "celery", "celery", "amqp"),
        SystemSpec("dramatiq", "dramatiq", "dramatiq"),
        SystemSpec("rq", "rq", "rq"),
        SystemSpec("huey", "huey", "huey"),
        SystemSpec("arq", "arq", "arq"),
    )
}
