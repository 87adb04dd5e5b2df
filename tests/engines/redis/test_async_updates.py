"""``aupdates()`` on Redis is pushed: each progress note wakes the stream, not a periodic read.

With ``every=5`` a stream that polled would see nothing for five seconds; on Redis every write of a
watched record leaves a token the stream's blocking pop takes (``watch.lua``, ``result_set.lua``).
"""

from __future__ import annotations

import asyncio
import threading
import time

import redis

from conveyor import App, State
from conveyor.states import ResultRecord, encode_record
from tests.conftest import REDIS_URL

#: Seconds within which a pushed note must reach the stream: far below ``EVERY``.
PUSH_BOUND = 0.5
#: The stream's longest wait between reads when nothing is written.
EVERY = 5.0


def test_each_progress_note_wakes_the_stream(redis_prefix: str) -> None:
    url = f"{REDIS_URL}?prefix={redis_prefix}"
    app = App("updates", broker=url, backend=url)
    written: dict[str, float] = {}

    def worker() -> None:
        """Three progress notes 0.3 s apart, then the final record (the worker's writes)."""
        for i in range(1, 4):
            time.sleep(0.3)
            note = ResultRecord(state=State.STARTED, progress=i / 3, note=f"step {i}")
            written[f"step {i}"] = time.monotonic()
            app.backend.set("u1", State.STARTED, encode_record(note), 60)
        time.sleep(0.3)
        written["done"] = time.monotonic()
        app.backend.set("u1", State.SUCCESS, encode_record(ResultRecord(state=State.SUCCESS, value=3)), 60)

    async def scenario() -> list[tuple[str, float]]:
        try:
            app.backend.set("u1", State.PENDING, encode_record(ResultRecord(state=State.PENDING)), 60)
            writer = threading.Thread(target=worker)
            writer.start()
            # Given a stream that reads at most every 5 s when nothing is written
            seen = [(u.note or u.state.value, time.monotonic()) async for u in app.result("u1").aupdates(every=EVERY)]
            await asyncio.to_thread(writer.join, 10)
            return seen
        finally:
            await app.aclose()

    seen = asyncio.run(scenario())
    try:
        # Then each note, and the final record, reached it within moments of its write, in order
        assert [what for what, _ in seen] == ["PENDING", "step 1", "step 2", "step 3", "SUCCESS"]
        for what, at in seen[1:]:
            assert at - written["done" if what == "SUCCESS" else what] < PUSH_BOUND, seen
        # And the watch mark it left expires by itself (no key of the stream lives on for long)
        client = redis.Redis.from_url(REDIS_URL)
        ttl = client.pttl(f"{{{redis_prefix}:r:u1}}:watch")
        client.close()
        assert ttl == -2 or 0 < ttl <= (EVERY + 10) * 1000
    finally:
        app.close()
