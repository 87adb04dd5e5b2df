"""The async producer API (issue 15) on every broker, each with its result backend (SQLite beside RabbitMQ).

``adelay``/``aapply_async``/``asend`` enqueue from a coroutine, ``aget``/``astate``/``aupdates`` read
the result on the event loop; a waiting ``aget`` wakes when the result is written (no polling), and a
cancelled one leaves nothing behind. Tasks run in a thread through ``conveyor.testing.drain``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from conveyor import App, ResultTimeout, State, chord, group
from conveyor.backends.base import ResultBackend, Wakers
from conveyor.backends.postgres import PostgresResultBackend
from conveyor.brokers.redis.aio import AsyncRedis
from conveyor.states import ResultRecord, encode_record
from conveyor.testing import drain
from tests.conformance.test_workflows import tasks as workflow_tasks

#: Seconds within which a woken waiter must return after the write: far below every safety re-read.
WAKE_BOUND = 0.5


@pytest.fixture
def app(broker_url: str, backend_url: str) -> Iterator[App]:
    instance = App("aio", broker=broker_url, backend=backend_url)
    yield instance
    instance.close()


def _later(seconds: float, action: Callable[[], object]) -> threading.Thread:
    """Run ``action`` in a thread after ``seconds`` (the worker's side, while the coroutine waits)."""

    def run() -> None:
        time.sleep(seconds)
        action()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _left_behind(backend: ResultBackend) -> int:
    """Waiters registered (PostgreSQL: with its listener) or Redis connections in use: what a finished or
    cancelled wait must not leave."""
    wakers = getattr(backend, "wakers", None)
    if isinstance(wakers, Wakers):
        return len(wakers)
    if isinstance(backend, PostgresResultBackend):
        return backend.db.listener().waiting
    conn = getattr(backend, "_conn", None)
    if conn is not None and isinstance(conn._aio, AsyncRedis):
        return conn._aio.in_use
    raise AssertionError(f"no introspection for {backend!r}")


def test_adelay_aget_astate_and_asend_on_every_engine(app: App) -> None:
    @app.task
    async def half(x: float) -> float:
        await asyncio.sleep(0)
        return x / 2

    @app.task
    def boom(message: str) -> None:
        raise ValueError(message)

    async def scenario() -> None:
        try:
            # Given a task sent from a coroutine: it is pending, and nothing runs yet
            r = await half.adelay(3.0)
            assert await r.astate() is State.PENDING
            # When a worker runs it while the coroutine awaits the result
            worker = _later(0.2, lambda: drain(app))
            started = time.monotonic()
            # Then aget returns the value (typed float), woken by the write
            assert await r.aget(timeout=10) == 1.5
            assert time.monotonic() - started < 5
            await asyncio.to_thread(worker.join, 10)
            assert await r.astate() is State.SUCCESS
            # A failure raises the task's own exception, as get() does
            failing = await boom.aapply_async(("no",))
            await asyncio.to_thread(drain, app)
            with pytest.raises(ValueError, match="no"):
                await failing.aget(timeout=5)
            await failing.aget(timeout=5, propagate=False)  # returns None: no exception
            # A batch goes out in one call, every message stored
            ids = await app.asend([half.message((1.0,)), half.message((4.0,), priority=3)])
            assert len(ids) == 2
            await asyncio.to_thread(drain, app)
            assert [await app.result(i).aget(timeout=5) for i in ids] == [0.5, 2.0]
            assert _left_behind(app.backend) == 0
        finally:
            await app.aclose()

    asyncio.run(scenario())


def test_workflows_sent_and_awaited_from_a_coroutine(app: App) -> None:
    t = workflow_tasks(app)
    add, total = t.add, t.total

    async def scenario() -> None:
        try:
            # Given a signature, a chain, a group and a chord sent from a coroutine
            one = await add.s(1, 2).adelay()
            two = await add.s(1).aapply_async((5,), priority=3)  # add(5, 1)
            chained = await (add.s(1, 1) | add.s(10)).adelay()
            grouped = await group(add.s(i, i) for i in range(3)).aapply_async()
            chorded = await chord([add.s(i, 1) for i in range(3)], total.s()).adelay()
            # Nothing ran yet: awaiting the group times out, as get() does
            with pytest.raises(ResultTimeout, match="did not finish"):
                await grouped.aget(timeout=0.2)
            # When a worker runs them while a coroutine awaits the group
            waiting = asyncio.ensure_future(grouped.aget(timeout=15))
            await asyncio.to_thread(drain, app, timeout=30)
            # Then every result arrives, in order
            assert await waiting == [0, 2, 4]
            assert [await one.aget(timeout=5), await two.aget(timeout=5)] == [3, 6]
            assert await chained.aget(timeout=5) == 12
            assert await chorded.aget(timeout=5) == 6
            assert _left_behind(app.backend) == 0
        finally:
            await app.aclose()

    asyncio.run(scenario())


def test_a_waiting_aget_wakes_when_the_result_is_written(app: App) -> None:
    record = encode_record(ResultRecord(state=State.SUCCESS, value=7))
    written: list[float] = []  # (when the write began, when it returned)

    def write() -> None:
        written.append(time.monotonic())
        app.backend.set("w1", State.SUCCESS, record, ttl=60)
        written.append(time.monotonic())

    async def scenario() -> float:
        try:
            # Given a coroutine waiting on a result nobody has written yet, both sides' connections
            # open (a first call on a loaded machine, above all on Cluster, can take a second: what
            # is timed here is the wake-up, not a connection's set-up)
            await asyncio.to_thread(app.backend.get, "w1")
            assert await app.result("w1").astate() is State.PENDING
            writer = _later(0.3, write)
            # When it is written from another thread, 0.3 s later
            assert await app.result("w1").aget(timeout=10) == 7
            returned = time.monotonic()
            await asyncio.to_thread(writer.join, 5)
            return returned
        finally:
            await app.aclose()

    # Then the waiter returns once the write began, and at once after it returned: not at a
    # polling tick or safety re-read
    returned = asyncio.run(scenario())
    began, done = written
    assert began <= returned < done + WAKE_BOUND


def test_aget_times_out_with_result_timeout(app: App) -> None:
    from conveyor import ResultTimeout

    async def scenario() -> None:
        try:
            with pytest.raises(ResultTimeout, match=r"within 0\.2 s"):
                await app.result("never").aget(timeout=0.2)
        finally:
            await app.aclose()

    asyncio.run(scenario())


def test_a_cancelled_aget_leaves_nothing_behind(app: App) -> None:
    record = encode_record(ResultRecord(state=State.SUCCESS, value="after"))

    async def scenario() -> None:
        try:
            # Given two coroutines waiting on the same result
            waiting = asyncio.create_task(app.result("c1").aget(timeout=30))
            other = asyncio.create_task(app.result("c1").aget(timeout=30))
            await asyncio.sleep(0.2)
            # When one is cancelled (a web client went away)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            # Then the other still wakes with the result, and no waiter or connection is left
            await asyncio.to_thread(app.backend.set, "c1", State.SUCCESS, record, 60)
            assert await asyncio.wait_for(other, 5) == "after"
            assert _left_behind(app.backend) == 0
            assert asyncio.all_tasks() == {asyncio.current_task()}
            # And a wait cut by asyncio.timeout leaves nothing either; the next call on the same loop works
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await app.result("c2").aget(timeout=30)
            assert _left_behind(app.backend) == 0
            assert await app.result("c1").aget(timeout=5) == "after"
        finally:
            await app.aclose()

    asyncio.run(scenario())


def test_aupdates_streams_progress_until_the_final_state(app: App) -> None:
    @app.task
    def steps(n: int) -> int:
        from conveyor import current_context

        for i in range(n):
            current_context().progress((i + 1) / n, note=f"step {i + 1}")
            time.sleep(0.3)
        return n

    async def scenario() -> list[tuple[State, float | None, str]]:
        try:
            r = await steps.adelay(3)
            worker = _later(0.1, lambda: drain(app))
            seen = [(u.state, u.progress, u.note) async for u in r.aupdates(every=0.05)]
            await asyncio.to_thread(worker.join, 10)
            return seen
        finally:
            await app.aclose()

    seen = asyncio.run(scenario())
    # Each progress note is seen, in order, and the stream ends with the final record
    notes = [note for _, _, note in seen if note]
    assert notes[:3] == ["step 1", "step 2", "step 3"], seen
    assert seen[-1][0] is State.SUCCESS


def test_every_waiter_on_one_id_wakes(app: App) -> None:
    record = encode_record(ResultRecord(state=State.SUCCESS, value=3))

    async def scenario() -> list[object]:
        try:
            # Given three coroutines and a thread waiting on one id
            in_thread = asyncio.create_task(asyncio.to_thread(app.result("m1").get, 10))
            waiting = [asyncio.create_task(app.result("m1").aget(timeout=10)) for _ in range(3)]
            await asyncio.sleep(0.3)
            # When the result is written once
            started = time.monotonic()
            await asyncio.to_thread(app.backend.set, "m1", State.SUCCESS, record, 60)
            # Then every one of them wakes with it, at once
            values = await asyncio.wait_for(asyncio.gather(*waiting, in_thread), 5)
            assert time.monotonic() - started < WAKE_BOUND * 2
            assert _left_behind(app.backend) == 0
            return values
        finally:
            await app.aclose()

    assert asyncio.run(scenario()) == [3, 3, 3, 3]
