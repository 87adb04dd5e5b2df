"""MemoryResultBackend: results in this process's memory, for tests and the memory broker.

A thread waits on a condition; a coroutine on a future of its own loop, resolved by the final write
(:class:`~conveyor.backends.base.Wakers`), so waiting holds no thread.
"""

from __future__ import annotations

import collections
import itertools
import math
import threading
import time
from collections.abc import Mapping

from conveyor.backends.base import MAX_BATCHES, Reading, ResultBackend, Wakers, await_woken, replaces
from conveyor.states import FINAL_STATES, State


class MemoryResultBackend(ResultBackend):
    """Results in a dict guarded by a condition variable; ``memory://`` URLs."""

    def __init__(self, url: str = "memory://") -> None:
        self._cond = threading.Condition()
        self._data: dict[str, tuple[State, bytes, float]] = {}
        self._leases: dict[str, tuple[str, float]] = {}  # name -> (owner, expires at)
        self._claims: dict[str, float] = {}  # key -> expires at
        self._values: dict[str, tuple[bytes, float]] = {}  # key -> (value, expires at or +inf)
        self._gathers: dict[str, tuple[dict[int, bytes], float]] = {}  # key -> (slots, expires at)
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, refilled at: monotonic seconds)
        self.wakers = Wakers()
        self._events: collections.deque[tuple[int, float, bytes]] = collections.deque(maxlen=MAX_BATCHES)
        self._event_seq = itertools.count(1)
        self._counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)

    def set(self, task_id: str, state: State, record: bytes, ttl: float) -> None:
        self.try_set(task_id, state, record, ttl)

    def try_set(self, task_id: str, state: State, record: bytes, ttl: float) -> bool:
        with self._cond:
            if not replaces(state, self._live(task_id)[0]):
                return False
            self._data[task_id] = (state, record, time.time() + ttl)
            if state in FINAL_STATES:
                self._cond.notify_all()
        if state in FINAL_STATES:
            self.wakers.wake([task_id])
        return True

    def get(self, task_id: str) -> bytes | None:
        with self._cond:
            return self._live(task_id)[1]

    def wait(self, task_id: str, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                state, record = self._live(task_id)
                remaining = deadline - time.monotonic()
                if (state is not None and state in FINAL_STATES) or remaining <= 0:
                    return record
                self._cond.wait(remaining)

    async def aget(self, task_id: str) -> bytes | None:
        return self.get(task_id)  # a dict lookup: no reason to leave the loop

    async def async_wait(self, task_id: str, timeout: float) -> bytes | None:
        async def read() -> Reading:
            with self._cond:
                state, record = self._live(task_id)
            return state in FINAL_STATES, record

        return await await_woken(self.wakers, task_id, timeout, read, recheck=timeout)

    def forget(self, task_id: str) -> None:
        with self._cond:
            self._data.pop(task_id, None)

    def _live(self, task_id: str) -> tuple[State | None, bytes | None]:
        entry = self._data.get(task_id)
        if entry is None:
            return None, None
        if entry[2] <= time.time():
            del self._data[task_id]
            return None, None
        return entry[0], entry[1]

    def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        with self._cond:
            now = time.time()
            holder = self._leases.get(name)
            if holder is not None and holder[0] != owner and holder[1] > now:
                return False
            self._leases[name] = (owner, now + ttl)
            return True

    def lease_holder(self, name: str) -> str | None:
        with self._cond:
            holder = self._leases.get(name)
        return holder[0] if holder is not None and holder[1] > time.time() else None

    def release_lease(self, name: str, owner: str) -> None:
        with self._cond:
            holder = self._leases.get(name)
            if holder is not None and holder[0] == owner:
                del self._leases[name]

    def claim(self, key: str, ttl: float) -> bool:
        with self._cond:
            now = time.time()
            if self._claims.get(key, 0.0) > now:
                return False
            self._claims[key] = now + ttl
            return True

    def unclaim(self, key: str) -> None:
        with self._cond:
            self._claims.pop(key, None)

    def get_value(self, key: str) -> bytes | None:
        with self._cond:
            entry = self._values.get(key)
            if entry is None or entry[1] <= time.time():
                return None
            return entry[0]

    def set_value(self, key: str, value: bytes, ttl: float | None = None) -> None:
        with self._cond:
            self._values[key] = (value, math.inf if ttl is None else time.time() + ttl)

    def delete_value(self, key: str) -> None:
        with self._cond:
            self._values.pop(key, None)

    def gather(self, key: str, index: int, value: bytes, ttl: float) -> int:
        with self._cond:
            slots = self._live_gather(key)
            slots[index] = value
            self._gathers[key] = (slots, time.time() + ttl)
            return len(slots)

    def gathered(self, key: str) -> dict[int, bytes]:
        with self._cond:
            return dict(self._live_gather(key))

    def delete_gather(self, key: str) -> None:
        with self._cond:
            self._gathers.pop(key, None)

    def _live_gather(self, key: str) -> dict[int, bytes]:
        entry = self._gathers.get(key)
        if entry is None or entry[1] <= time.time():
            return {}
        return entry[0]

    def take_token(self, bucket: str, rate: float, burst: float) -> float:
        with self._cond:
            now = time.monotonic()
            tokens, at = self._buckets.get(bucket, (burst, now))
            tokens = min(burst, tokens + (now - at) * rate) - 1.0
            self._buckets[bucket] = (tokens, now)
            return 0.0 if tokens >= 0.0 else -tokens / rate

    def append_events(self, batch: bytes, ttl: float) -> None:
        now = time.time()
        with self._cond:
            self._events.append((next(self._event_seq), now, batch))
            while self._events and self._events[0][1] < now - ttl:
                self._events.popleft()

    def read_events(self, after: str | None, limit: int) -> list[tuple[str, bytes]]:
        start = 0 if after is None else int(after)
        with self._cond:
            found = [(str(seq), batch) for seq, _, batch in self._events if seq > start]
        return found[:limit]

    def newest_events(self, limit: int) -> list[tuple[str, bytes]]:
        with self._cond:
            return [(str(seq), batch) for seq, _, batch in list(self._events)[-limit:]]

    def add_counts(self, key: str, counts: Mapping[str, float]) -> None:
        with self._cond:
            self._counts[key].update(counts)

    def counts(self, key: str) -> dict[str, float]:
        with self._cond:
            return dict(self._counts.get(key, {}))

    def last_event_cursor(self) -> str | None:
        with self._cond:
            return str(self._events[-1][0]) if self._events else None
