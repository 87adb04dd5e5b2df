"""The redis.asyncio client behind the async producer: scripts survive a lost script cache, cancels return connections.

On a private redis-server (``SCRIPT FLUSH`` must not touch the shared one): the enqueue script and the
wake-up pipeline (BLPOP, then ``pass_on.lua``) reload their script after ``NOSCRIPT``; a cancelled
wait closes the connection it was lent and counts it back; each event loop gets connections of its own.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
import redis

from conveyor import App, State
from conveyor.backends.redis import RedisResultBackend
from conveyor.brokers.redis.aio import AsyncRedis
from conveyor.states import ResultRecord, encode_record
from tests.servers import private_redis


def _borrowed(aio: AsyncRedis) -> int:
    """Connections this loop lent to a blocking wait and did not get back, and those its client's pool lent."""
    clients = aio._loops[asyncio.get_running_loop()]
    return aio.lent() + len(clients.client.connection_pool._in_use_connections)


def test_scripts_reload_after_a_flush_and_a_cancelled_wait_gives_its_connection_back(tmp_path: Path) -> None:
    with private_redis(tmp_path) as server:
        app = App("aioclient", broker=f"{server.url}?prefix=aioc", backend=f"{server.url}?prefix=aioc")
        backend = app.backend
        assert isinstance(backend, RedisResultBackend)
        aio = backend._conn.aio
        flusher = redis.Redis.from_url(server.url)

        @app.task
        async def ping(n: int) -> int:
            return n

        record = encode_record(ResultRecord(state=State.SUCCESS, value="woken"))

        async def scenario() -> None:
            try:
                await ping.adelay(1)  # registers the queue: later calls are one EVALSHA
                # Given a server that lost its scripts (a restart without persistence, SCRIPT FLUSH)
                flusher.script_flush()
                # Then adelay's EVALSHA loads the script again and the message is stored
                second = await ping.adelay(2)
                assert await second.astate() is State.PENDING
                # And a waiting aget, whose BLPOP pipeline's script is gone, still wakes with the value
                flusher.script_flush()
                writer = threading.Timer(0.3, lambda: backend.set("s1", State.SUCCESS, record, 60))
                writer.start()
                started = time.monotonic()
                assert await app.result("s1").aget(timeout=10) == "woken"
                assert time.monotonic() - started < 2
                writer.join(5)
                # When a wait is cancelled mid-BLPOP
                waiting = asyncio.create_task(app.result("never").aget(timeout=30))
                await asyncio.sleep(0.2)
                assert _borrowed(aio) == 1
                waiting.cancel()
                await asyncio.gather(waiting, return_exceptions=True)
                # Then its connection is counted back (and closed), and nothing is in flight
                assert _borrowed(aio) == 0
                assert aio.in_use == 0
            finally:
                await app.aclose()

        producer = app.broker._conn.aio  # type: ignore[attr-defined]
        assert isinstance(producer, AsyncRedis)

        async def second_loop() -> list[asyncio.AbstractEventLoop]:
            try:
                # A new event loop gets clients of its own (the old loop's were closed by app.aclose())
                await ping.adelay(3)
                return list(producer._loops)
            finally:
                await app.aclose()

        try:
            asyncio.run(scenario())
            loops = asyncio.run(second_loop())
            assert len(loops) == 1
            assert len(producer._loops) == len(aio._loops) == 0
            # Every adelay stored its message once, the two after a flush included
            assert [(s.queue, s.ready) for s in app.broker.stats()] == [("default", 3)]
        finally:
            flusher.close()
            app.close()


def test_a_cancel_a_library_layer_swallowed_still_ends_the_call() -> None:
    """A cancel asked while a call ran ends it with CancelledError, even when the awaited layer dropped it.

    asyncio.wait_for on Python 3.11 returns its inner result when that result and a cancel of its
    caller meet in one loop step (redis.asyncio uses it for every send on a connection with a socket
    timeout): the call then returned and a cancelled aget waited on. No server is needed: the op is
    such a layer. A call made by a task handling an earlier cancel (a clean-up) still returns.
    """
    aio = AsyncRedis(
        "redis://127.0.0.1:1/0",
        "redis://127.0.0.1:1/0",
        retry_for=5,
        socket_timeout=5,
        connect_timeout=1,
        max_block=5,
        scripts={},
    )

    async def swallowing() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:  # the layer's result, the cancel dropped
            return "result"
        return "slept"

    async def clean_up_after_a_cancel() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return await aio.call(lambda: asyncio.sleep(0, result="cleaned"))
        return "slept"

    async def scenario() -> None:
        # Given a call whose op swallows a cancel
        call = asyncio.create_task(aio.call(swallowing))
        await asyncio.sleep(0.05)
        # When its task is cancelled
        call.cancel()
        # Then the call ends with CancelledError at once, nothing left in use
        async with asyncio.timeout(5):
            with pytest.raises(asyncio.CancelledError):
                await call
        assert aio.in_use == 0
        # And a call made while handling an earlier cancel is not taken for a cancelled one
        cleaner = asyncio.create_task(clean_up_after_a_cancel())
        await asyncio.sleep(0.05)
        cleaner.cancel()
        async with asyncio.timeout(5):
            assert await cleaner == "cleaned"

    asyncio.run(scenario())
