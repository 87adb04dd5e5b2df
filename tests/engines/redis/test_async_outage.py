"""Redis behind the async producer: an outage during ``adelay`` is a clear BrokerUnavailable, nothing half-sent.

A private redis-server (durable: it keeps every acknowledged write across a restart) is frozen with
an ``adelay`` in flight, then killed; the call must fail with BrokerUnavailable within its bounded
retry, and after the restart the queue holds exactly what was acknowledged before.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from conveyor import App, BrokerUnavailable
from conveyor.backends.redis import RedisResultBackend
from conveyor.brokers.redis.broker import RedisBroker
from tests.servers import private_redis

#: Seconds the broker retries before BrokerUnavailable in this test (5 by default).
RETRY_FOR = 1.0


def test_adelay_during_an_outage_raises_broker_unavailable_and_sends_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(RedisBroker, "retry_for", RETRY_FOR)
    monkeypatch.setattr(RedisResultBackend, "retry_for", RETRY_FOR)
    with private_redis(tmp_path, durable=True) as server:
        app = App("outage", broker=f"{server.url}?prefix=aio-outage")

        @app.task
        async def ping(n: int) -> int:
            return n

        async def scenario() -> None:
            try:
                # Given one task sent while the server is up (the queue is known: adelay's one-EVALSHA path)
                first = await ping.adelay(1)
                # When the server stops answering with an adelay in flight, and then dies
                server.freeze()
                in_flight = asyncio.create_task(ping.adelay(2))
                await asyncio.sleep(0.2)
                assert not in_flight.done()
                started = time.monotonic()
                await asyncio.to_thread(server.kill)
                # Then the call fails with BrokerUnavailable within its bounded retry, naming the server
                with pytest.raises(BrokerUnavailable, match=r"did not answer within 1 s"):
                    await in_flight
                assert time.monotonic() - started < RETRY_FOR + 2
                # And a call while it is down fails the same way, without hanging
                with pytest.raises(BrokerUnavailable):
                    await ping.adelay(3)
                # After a restart: the first task is there, nothing of the failed calls; sending works again
                await asyncio.to_thread(server.start)
                stats = await asyncio.to_thread(app.broker.stats)
                assert [(s.queue, s.ready) for s in stats] == [("default", 1)]
                assert await app.asend([ping.message((4,))]) != [first.id]
                stats = await asyncio.to_thread(app.broker.stats)
                assert [(s.queue, s.ready) for s in stats] == [("default", 2)]
            finally:
                await app.aclose()
                app.close()

        asyncio.run(scenario())
