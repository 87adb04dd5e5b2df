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
