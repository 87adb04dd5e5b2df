"""The lane behind ``adelay`` and ``aget``'s reads: one pipelined connection per event loop.

Concurrent coroutines share it: each gets its own reply although replies are matched by order
alone, also when some of them were cancelled in flight; a server that stops answering is caught by
the lane's watchdog (a clear BrokerUnavailable), and the next call after it recovers opens a new lane.
A blocking wait borrows a lane of its own and gives it back when it returns. On a private
redis-server (it is frozen, and its client list must hold only this test's connections).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import redis

from conveyor import App, BrokerUnavailable, ResultTimeout
from conveyor.brokers.redis.aio import AsyncRedis
from conveyor.brokers.redis.broker import RedisBroker
from tests.conftest import REDIS_URL
from tests.servers import private_redis

#: Seconds a command may go unanswered (the lane's watchdog) and seconds of retries, in this test.
SOCKET_TIMEOUT = 0.5
RETRY_FOR = 1.0


def _async_connections(admin: redis.Redis) -> int:
    """Connections whose last command was a GET or an EVALSHA (the sync client's last was the registering EXEC)."""
    return sum(1 for c in admin.client_list() if c["cmd"] in ("get", "evalsha"))


def test_concurrent_calls_share_one_connection_and_each_gets_its_own_reply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(RedisBroker, "socket_timeout", SOCKET_TIMEOUT)
    monkeypatch.setattr(RedisBroker, "retry_for", RETRY_FOR)
    with private_redis(tmp_path) as server:
        app = App("lane", broker=f"{server.url}?prefix=lane")
        aio = app.broker._conn.aio  # type: ignore[attr-defined]
        assert isinstance(aio, AsyncRedis)
        admin = redis.Redis.from_url(server.url)
        admin.mset({f"k{i}": f"v{i}" for i in range(300)})

        @app.task
        async def ping(n: int) -> int:
            return n

        async def scenario() -> None:
            try:
                await ping.adelay(0)  # registers the queue (in a thread): later calls are one EVALSHA
                # Given 300 reads and 100 adelays from as many coroutines at once
                reads = [asyncio.ensure_future(aio.get(f"k{i}")) for i in range(300)]
                sends = [asyncio.ensure_future(ping.adelay(i)) for i in range(1, 101)]
                # When every third read is cancelled while its command is in flight
                await asyncio.sleep(0)
                for read in reads[::3]:
                    read.cancel()
                await asyncio.gather(*reads, *sends, return_exceptions=True)
                # Then every other read got its own key's value (replies are matched by order alone)
                for i, read in enumerate(reads):
                    if i % 3:
                        assert read.result() == f"v{i}".encode()
                    else:
                        assert read.cancelled()
                # And every adelay stored its message, all over one connection, nothing left in flight
                assert len({s.result().id for s in sends}) == 100
                assert aio.in_use == 0
                assert await asyncio.to_thread(_async_connections, admin) == 1
                # And the lane is still in step: a read after the cancelled ones gets its own reply
                assert await aio.get("k299") == b"v299"
                # A wait that ran out gives its blocking lane back, and the next wait reuses it
                waits = app.backend._conn.aio  # type: ignore[attr-defined]
                for _ in range(2):
                    with pytest.raises(ResultTimeout):
                        await app.result("never").aget(timeout=0.2)
                    assert waits.lent() == 0
                    assert len(waits._loops[asyncio.get_running_loop()].idle) == 1
                connections = len(await asyncio.to_thread(admin.client_list))
                with pytest.raises(ResultTimeout):
                    await app.result("never").aget(timeout=0.2)
                assert len(await asyncio.to_thread(admin.client_list)) == connections

                # When the server stops answering with a call in flight
                server.freeze()
                started = time.monotonic()
                # Then the watchdog fails the lane and the call raises BrokerUnavailable after its retries
                with pytest.raises(BrokerUnavailable, match=r"did not answer within 1 s"):
                    await aio.get("k1")
                assert time.monotonic() - started < SOCKET_TIMEOUT + RETRY_FOR + 3
                assert aio.in_use == 0
                # And once it answers again, the next call opens a new lane and gets its reply
                server.thaw()
                assert await aio.get("k2") == b"v2"
                assert (await ping.adelay(101)).id
            finally:
                await app.aclose()

        try:
            asyncio.run(scenario())
            assert [(s.queue, s.ready) for s in app.broker.stats()] == [("default", 102)]
        finally:
            admin.close()
            app.close()


def test_adelays_leave_their_event_loop_no_timer(redis_prefix: str) -> None:
    """A timer in a loop's schedule costs every turn of that loop (about a twentieth of an adelay): the
    lanes' commands are timed by one watchdog thread instead (the frozen server above shows it still does)."""
    app = App("lane", broker=f"{REDIS_URL}?prefix={redis_prefix}")

    @app.task
    def noop(n: int) -> None:
        pass

    async def scenario() -> int:
        try:
            # Given adelays on a loop, over its lane
            for i in range(3):
                await noop.adelay(i)
            # Then the loop's schedule holds no timer for them
            return len(asyncio.get_running_loop()._scheduled)  # type: ignore[attr-defined]
        finally:
            await app.aclose()

    try:
        assert asyncio.run(scenario()) == 0
    finally:
        app.close()
