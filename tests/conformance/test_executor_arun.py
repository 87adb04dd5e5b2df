"""Executor.arun: one delivery's steps with its task awaited on the running loop (the asyncio pool's path).

Each test reserves real deliveries and awaits ``arun`` on a loop of its own, with the settler the
asyncio pool uses (BatchSettler: a success waits in its pending lists; the test settles it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from conveyor import App, State
from conveyor.brokers import Delivery
from conveyor.context import current_context
from conveyor.states import decode_record
from conveyor.worker.executor import Executor, Outcome
from conveyor.worker.settle import BatchSettler

pytestmark = pytest.mark.parametrize("broker_kind", ["memory", "redis"], indirect=True)


@pytest.fixture
def app(broker_url: str, backend_url: str) -> Iterator[App]:
    instance = App("arun", broker=broker_url, backend=backend_url)
    yield instance
    instance.close()


def reserve(app: App, n: int) -> list[Delivery]:
    return app.broker.reserve([app.settings.default_queue], n, owner="test", lease=30, timeout=1)


def settle(app: App, settler: BatchSettler) -> None:
    pending = settler.take()
    app.backend.set_many(pending.results, app.settings.result_ttl)
    app.broker.ack(pending.acks)


def state_of(app: App, task_id: str) -> State:
    raw = app.backend.get(task_id)
    return State.PENDING if raw is None else decode_record(raw).state


def test_a_hundred_coroutines_run_at_once_and_their_successes_wait_for_the_batch(app: App) -> None:
    # Given 100 tasks that each await 0.3 s
    @app.task(name="nap")
    async def nap(i: int) -> int:
        await asyncio.sleep(0.3)
        return i

    results = [nap.delay(i) for i in range(100)]
    settler = BatchSettler(app)
    executor = Executor(app, "w", settler)

    async def run_all() -> list[Outcome]:
        return await asyncio.gather(*(executor.arun(d) for d in reserve(app, 100)))

    # When arun awaits all of them on one loop
    started = time.monotonic()
    outcomes = asyncio.run(run_all())
    # Then they ran together, and each success is pending in the settler until the batch is settled
    assert time.monotonic() - started < 2.5
    assert {o.state for o in outcomes} == {"SUCCESS"} and all(o.deferred for o in outcomes)
    assert state_of(app, results[0].id) is State.STARTED
    settle(app, settler)
    assert sorted(r.get(timeout=1) for r in results) == list(range(100))


def test_a_hard_time_limit_cancels_the_coroutine_and_records_failure_without_retry(app: App) -> None:
    # Given a task with retries whose coroutine outlives its 0.3 s hard limit
    cleaned: list[str] = []

    @app.task(name="stuck", time_limit=0.3, retries=3)
    async def stuck() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            cleaned.append("yes")

    result = stuck.delay()
    settler = BatchSettler(app)
    [delivery] = reserve(app, 1)
    # When arun runs it
    outcome = asyncio.run(Executor(app, "w", settler).arun(delivery))
    settle(app, settler)
    # Then it was cancelled (its finally ran) and recorded FAILURE TimeLimitExceeded, not retried
    assert outcome.state == "FAILURE" and cleaned == ["yes"]
    info = result.info
    assert info is not None and info.state is State.FAILURE
    assert info.error is not None and info.error.type == "TimeLimitExceeded"
    assert reserve(app, 1) == []


def test_cancelling_the_call_terminates_it_as_revoked(app: App) -> None:
    # Given a long task running under arun, its call registered in ``calls``
    @app.task(name="long")
    async def long() -> None:
        await asyncio.sleep(30)

    result = long.delay()
    settler = BatchSettler(app)
    executor = Executor(app, "w", settler)
    [delivery] = reserve(app, 1)
    calls: dict[str, asyncio.Future[Any]] = {}

    async def run_and_terminate() -> Outcome:
        running = asyncio.ensure_future(executor.arun(delivery, calls))
        while delivery.id not in calls:
            await asyncio.sleep(0.01)
        calls[delivery.id].cancel()  # what the pool does for revoke(terminate=True)
        return await running

    # When its call is cancelled
    outcome = asyncio.run(run_and_terminate())
    # Then it ends REVOKED, its ack waits in the settler, and the call is no longer registered
    assert outcome.state == "REVOKED" and outcome.deferred and calls == {}
    assert [d.id for d in settler.take().acks] == [result.id]


def test_a_sync_task_runs_on_the_given_threads_with_its_context(app: App) -> None:
    # Given a sync task that reads its context
    @app.task(name="whoami")
    def whoami() -> str:
        return current_context().id

    result = whoami.delay()
    settler = BatchSettler(app)
    [delivery] = reserve(app, 1)
    # When arun runs it with a thread pool for sync tasks
    with ThreadPoolExecutor(1, "sync") as threads:
        outcome = asyncio.run(Executor(app, "w", settler).arun(delivery, threads=threads))
    settle(app, settler)
    # Then it ran there, seeing its own context
    assert outcome.state == "SUCCESS"
    assert result.get(timeout=1) == result.id
