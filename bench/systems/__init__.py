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
#: How long an ``io`` task blocks its thread (io-threads: an HTTP call or a query, say).
IO_BLOCK_SECONDS = 0.02
#: How long an ``aio`` task awaits (io-async: an LLM call, say).
AIO_WAIT_SECONDS = 1.0

#: The workloads of issue 6: every system runs them, with ``concurrency`` tasks at once in its default pool.
CLASSIC_WORKLOADS = ("throughput", "results", "latency", "batch", "mixed")
#: The I/O-bound workloads of issue 12: 2 worker processes x 128 threads, and one asyncio worker x 1000.
IO_THREADS = "io-threads"
IO_ASYNC = "io-async"
#: The workflow workloads of issue 17: a chord and a group of N no-op members, a chain of N steps.
WORKFLOWS = ("chord", "group", "chain")

#: The web workloads of issue 15: HTTP clients against one uvicorn process serving the system's FastAPI
#: app, whose endpoint sends a task that awaits WEB_TASK_SECONDS and waits for its result; and the
#: per-call price of conveyor's ``await task.adelay()`` against ``task.delay()``.
WEB = "web"
ADELAY = "adelay"
#: How long the web workload's task awaits (sleeps, on Celery's thread pool).
WEB_TASK_SECONDS = 0.05
#: Concurrent HTTP clients of the web workload's two phases.
WEB_CLIENTS = 200
WEB_FEW_CLIENTS = 20
#: Seconds a web request waits for its task's result before it answers 504.
WEB_RESULT_TIMEOUT = 30.0


@dataclasses.dataclass(frozen=True)
class SystemSpec:
    """One row of the tables.

    Attributes:
        name: the name on the command line and in the tables.
        module: ``bench.systems.<module>`` holds its ``Driver`` class.
        venv: the peer venv under ``bench/.venvs`` its driver runs in; None for conveyor (the
            interpreter running the harness, where conveyor is installed).
        variant: passed to the driver (conveyor's broker: ``redis``, ``sqlite``, ``amqp`` or ``postgres``, or
            ``redis-noevents``: Redis with the event log off, the row that prices events; Celery's:
            ``amqp`` for RabbitMQ as its broker, results on the run's Redis either way).
        workloads: the workloads it runs; the others are skipped (no thread pool, no asyncio, or
            a row that only makes sense on one workload).
        log_level: the level its workers log at. Every system runs quiet (WARNING) except the row
            that measures what conveyor's default INFO line per task costs.
    """

    name: str
    module: str
    venv: str | None
    variant: str = ""
    workloads: tuple[str, ...] = CLASSIC_WORKLOADS
    log_level: str = "WARNING"


SYSTEMS: dict[str, SystemSpec] = {
    spec.name: spec
    for spec in (
        SystemSpec(
            "conveyor-redis",
            "conveyor",
            None,
            "redis",
            (*CLASSIC_WORKLOADS, IO_THREADS, IO_ASYNC, *WORKFLOWS, WEB, ADELAY),
        ),
        SystemSpec("conveyor-redis-info", "conveyor", None, "redis", ("throughput",), log_level="INFO"),
        SystemSpec("conveyor-redis-noevents", "conveyor", None, "redis-noevents", ("throughput",)),
        SystemSpec("conveyor-sqlite", "conveyor", None, "sqlite"),
        SystemSpec("conveyor-amqp", "conveyor", None, "amqp"),
        SystemSpec("conveyor-postgres", "conveyor", None, "postgres", (*CLASSIC_WORKLOADS, *WORKFLOWS)),
        SystemSpec("celery", "celery", "celery", "", (*CLASSIC_WORKLOADS, IO_THREADS, *WORKFLOWS)),
        SystemSpec("celery-amqp", "celery", "celery", "amqp"),
        SystemSpec("dramatiq", "dramatiq", "dramatiq", "", (*CLASSIC_WORKLOADS, IO_THREADS, IO_ASYNC)),
        SystemSpec("dramatiq-amqp", "dramatiq", "dramatiq-amqp", "amqp"),
        SystemSpec("rq", "rq", "rq"),
        SystemSpec("huey", "huey", "huey", "", (*CLASSIC_WORKLOADS, IO_THREADS)),
        SystemSpec("arq", "arq", "arq", "", (*CLASSIC_WORKLOADS, IO_ASYNC)),
        SystemSpec("procrastinate", "procrastinate", "procrastinate"),
        # The web workload's peers: the same drivers in venvs that also hold FastAPI and uvicorn.
        SystemSpec("celery-web", "celery", "celery-web", "", (WEB,)),
        SystemSpec("arq-web", "arq", "arq-web", "", (WEB,)),
    )
}
