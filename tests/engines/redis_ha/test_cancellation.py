"""A cancelled ``aget`` stops at once on Sentinel, even while its connections are opening.

On Sentinel every new connection asks a sentinel for the master first. redis.asyncio bounds each
send to a sentinel with ``asyncio.wait_for``, which on Python 3.11 loses a cancel that arrives in
the same loop step as the send's completion: the cancelled wait then ran on to its own timeout
(issue seen under load in ``test_a_cancelled_aget_leaves_nothing_behind``). Here many waits open
their connections together on a fresh event loop and are cancelled one after another over those
opening steps; every one must end with CancelledError within seconds, and leave no connection borrowed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from conveyor import App
from conveyor.brokers.redis.aio import AsyncRedis

#: Waits opened together per round, and rounds (each on a fresh loop: every connection opens again).
WIDTH, ROUNDS = 25, 3
#: Seconds between two cancels: spreads them over the connections' opening steps.
STAGGER = 0.004


@pytest.fixture(params=["redis-sentinel"])
def broker_kind(request: pytest.FixtureRequest) -> str:
    """Sentinel only: the lost cancel was its sentinels' sends. (On Cluster, a cancel while redis.asyncio's
    RedisCluster learns the slots may leave a node connection to the garbage collector, a ResourceWarning
    seen once in nine loaded runs: not what this test is about, and not fixed yet.)"""
    kind: str = request.param
    return kind


@pytest.fixture
def app(broker_url: str, backend_url: str) -> Iterator[App]:
    instance = App("cancel", broker=broker_url, backend=backend_url)
    yield instance
    instance.close()


def test_every_wait_cancelled_while_its_connection_opens_stops_at_once(app: App) -> None:
    async def one_round(number: int) -> tuple[int, int]:
        try:
            # Given waits on results nobody writes, each opening its connection (Sentinel: asking a sentinel)
            waits = [asyncio.create_task(app.result(f"x{number}-{i}").aget(timeout=30)) for i in range(WIDTH)]
            # When they are cancelled one after another while their connections open
            for wait in waits:
                await asyncio.sleep(STAGGER)
                wait.cancel()
            done, pending = await asyncio.wait(waits, timeout=5)
            for wait in pending:  # a lost cancel: cancel again so the round ends, and count it
                wait.cancel()
            if pending:
                await asyncio.wait(pending, timeout=10)
            aio = app.backend._conn.aio  # type: ignore[attr-defined]
            assert isinstance(aio, AsyncRedis)
            assert all(wait.cancelled() for wait in done), [wait.result() for wait in done if not wait.cancelled()]
            return len(pending), aio.in_use
        finally:
            await app.aclose()

    for number in range(ROUNDS):
        # Then every one ended (CancelledError) within seconds, not at its 30 s timeout; nothing stays borrowed
        lost, in_use = asyncio.run(one_round(number))
        assert (lost, in_use) == (0, 0), f"round {number}: {lost} of {WIDTH} cancels lost"
