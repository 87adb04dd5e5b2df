"""adelay's packed EVALSHA on Redis: a retry after a lost reply stores nothing more; a held explicit id is refused.

An ``adelay`` with a generated id sends that id as its call's attempt (enqueue.lua's ARGV[2]) instead of
random bytes. The same command sent again, as a retry after its reply was lost is (on the lane, or
through ``run`` after the lane failed), must answer success and leave one message; another call with
that id as an explicit ``task_id`` must still get DuplicateTaskId.
"""

from __future__ import annotations

import asyncio

import pytest

from conveyor import App, DuplicateTaskId
from conveyor.brokers.redis.aio import AsyncRedis
from conveyor.brokers.redis.enqueue import enqueue_args, packed_enqueue_one
from conveyor.brokers.redis.keys import queue_keys
from tests.conftest import REDIS_URL


def test_a_retried_adelay_is_stored_once_and_its_id_stays_refused_to_other_calls(redis_prefix: str) -> None:
    app = App("packed", broker=f"{REDIS_URL}?prefix={redis_prefix}")

    @app.task
    def double(n: int) -> int:
        return 2 * n

    aio = app.broker._conn.aio  # type: ignore[attr-defined]
    assert isinstance(aio, AsyncRedis)
    keys = queue_keys(redis_prefix, "default")

    async def scenario() -> None:
        try:
            await double.adelay(0)  # registers the queue and opens the loop's lane
            [envelope] = app._envelopes([double.message((1,))])
            assert not envelope.explicit_id
            head = aio.script_head("enqueue", keys.enqueue_keys, [keys.message], 6)
            packed = packed_enqueue_one(head, None, envelope)

            def args() -> list[str | bytes]:
                return enqueue_args(keys, envelope.id.encode(), [envelope])

            # Given an adelay's command, stored
            assert await aio.run_packed("enqueue", keys.enqueue_keys, packed, args) == [b"", 0]
            # When it is sent again, as its retry after a lost reply (on the lane, and through run())
            assert await aio.run_packed("enqueue", keys.enqueue_keys, packed, args) == [b"", 0]
            assert await aio.run("enqueue", keys.enqueue_keys, args()) == [b"", 0]
            # Then another call that names the same id is refused, and stores nothing
            with pytest.raises(DuplicateTaskId):
                await double.aapply_async((2,), task_id=envelope.id)
            assert aio.in_use == 0
        finally:
            await app.aclose()

    try:
        asyncio.run(scenario())
        # And the queue holds the first adelay's message and this one, once
        assert [(s.queue, s.ready) for s in app.broker.stats()] == [("default", 2)]
    finally:
        app.close()
