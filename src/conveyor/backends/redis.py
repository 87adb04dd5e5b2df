"""RedisResultBackend: task results in Redis, with a wait() that wakes the moment a result lands.

Each result is one string ``{prefix:r:ID}`` = ``STATE\\n`` + record, written with a PX time to live by
``result_set.lua``, which applies the revocation rule of ``ResultBackend.set`` on the server.
A final state also pushes a wake-up token onto ``{prefix:r:ID}:notify`` (same slot, short expiry):
``wait()`` reads the record, then BLPOPs that list for the remaining time, then reads again. A waiter
that wakes passes the token on, so every waiter on the same id wakes; a non-final write deletes the
list, so an old token never wakes a waiter for nothing. No polling interval anywhere.
``async_wait()`` does the same on the event loop, through redis.asyncio connections
(``brokers/redis/aio.py``): a coroutine's BLPOP holds one connection of its loop and no thread.

Coordination primitives: a lease is ``{prefix:lease:NAME}`` = owner with a PX ttl, taken or renewed by
``lease_acquire.lua`` and released by ``lease_release.lua`` (compare, then delete); a claim is
``{prefix:claim:KEY}`` set with ``SET NX PX``; a value is ``{prefix:kv:KEY}``; a gather is the hash
``{prefix:g:KEY}`` (HSET, PEXPIRE and HLEN in one MULTI); a token bucket is ``{prefix:bucket:NAME}``,
taken by ``token_take.lua``. Expiry runs on the server's clock, so clients with skewed clocks agree on it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any, cast

from redis.client import Pipeline

from conveyor.backends.base import MAX_BATCHES, ResultBackend
from conveyor.brokers.redis.connection import RedisConnection, ScriptCall, split_url, without_broker_params
from conveyor.brokers.redis.keys import (
    bucket_key,
    changed_key,
    claim_key,
    counts_key,
    events_key,
    gather_key,
    lease_key,
    notify_key,
    queue_keys,
    result_key,
    value_key,
    watch_key,
)
from conveyor.states import FINAL_STATES, State

#: Shortest blocking wait in seconds: Redis reads a BLPOP timeout in milliseconds and 0 means forever.
MIN_BLOCK = 0.002
_FINAL = frozenset(state.value.encode() for state in FINAL_STATES)
#: Lua scripts of the coordination primitives (``brokers/redis/scripts/``), each on one key.
SCRIPTS = ("lease_acquire", "lease_release", "pass_on", "result_set", "token_take", "watch")


class RedisResultBackend(ResultBackend):
    """Results in Redis; ``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://`` and ``redis+cluster://``
    URLs (``brokers/redis/topology.py``) with an optional ``prefix=``.

    Args:
        url: a redis-py URL; its ``prefix`` query parameter (default ``conveyor``) starts every key.
        retry_for: overrides :attr:`retry_for` for this backend.
    """

    #: Seconds an operation keeps retrying connection errors before it raises BrokerUnavailable.
    retry_for: float = 5.0
    #: Seconds one command may take before it counts as a connection fault.
    socket_timeout: float = 10.0
    #: Seconds to open a connection.
    connect_timeout: float = 2.0
    #: Longest single blocking wait in seconds; a longer wait() blocks in several steps.
    max_block: float = 5.0
    #: Seconds a wake-up token outlives its final write (at most the record's own ttl): any waiter
    #: between its read and its BLPOP finds it.
    notify_ttl: float = 60.0

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, retry_for: float | None = None) -> None:
        client_url, self.prefix, self.url = split_url(url)
        client_url = without_broker_params(client_url)  # wait= confirms the broker's enqueues only
        self._client_url = client_url
        self._conn = RedisConnection(
            client_url,
            self.url,
            retry_for=self.retry_for if retry_for is None else retry_for,
            socket_timeout=self.socket_timeout,
            connect_timeout=self.connect_timeout,
            max_block=self.max_block,
            scripts=SCRIPTS,
        )
        #: Whether :meth:`set_held` checks each lease in its write (the broker on this server said so).
        self.fenced = False

    @property
    def _ttl(self) -> int:
        return _ms(self.notify_ttl)

    def __repr__(self) -> str:
        return f"RedisResultBackend({self.url!r}, prefix={self.prefix!r})"

    def set(self, task_id: str, state: State, record: bytes, ttl: float) -> None:
        self.set_many([(task_id, state, record)], ttl)

    def try_set(self, task_id: str, state: State, record: bytes, ttl: float) -> bool:
        return bool(self._conn.run(*self._write_call(task_id, state, record, ttl)))

    def set_many(self, items: Sequence[tuple[str, State, bytes]], ttl: float) -> None:
        if items:  # one pipeline of result_set.lua calls: one round trip, each write checked on the server
            self._conn.run_many([self._write_call(task_id, state, record, ttl) for task_id, state, record in items])

    def location(self) -> str:
        """The redis-py URL of its server and database, with the key prefix as the fragment."""
        return f"{self._client_url}#{self.prefix}"

    def beside_leases(self) -> None:
        """The Redis broker on this server, database and prefix (not a Cluster): fence with its message hashes."""
        self.fenced = True

    def set_held(
        self, items: Sequence[tuple[str, State, bytes]], ttl: float, leases: Sequence[tuple[str, str]]
    ) -> list[str]:
        """Each result_set.lua call also names the message's hash and the writer's token (KEYS[5], ARGV[6]).

        The script refuses the write (-1) unless the hash still holds that token: one atomic step, so a
        write that waited in a cut link is refused if the message was redelivered (or acked) meanwhile.
        """
        if not self.fenced:
            self.set_many(items, ttl)
            return []
        calls = []
        for (task_id, state, record), (queue, token) in zip(items, leases, strict=True):
            call = self._write_call(task_id, state, record, ttl)
            if token:
                name, keys, args = call
                call = (name, [*keys, queue_keys(self.prefix, queue).message + task_id], [*args, token])
            calls.append(call)
        replies = self._conn.run_many(calls) if calls else []
        return [item[0] for item, reply in zip(items, replies, strict=True) if reply == -1]

    def try_set_held(
        self, task_id: str, state: State, record: bytes, ttl: float, lease: tuple[str, str]
    ) -> bool | None:
        queue, token = lease
        if not self.fenced or not token:
            return self.try_set(task_id, state, record, ttl)
        name, keys, args = self._write_call(task_id, state, record, ttl)
        reply = self._conn.run(name, [*keys, queue_keys(self.prefix, queue).message + task_id], [*args, token])
        return None if reply == -1 else bool(reply)

    def get(self, task_id: str) -> bytes | None:
        return self._read(task_id)[1]

    def get_many(self, task_ids: Sequence[str]) -> list[bytes | None]:
        if not task_ids:
            return []
        keys = [result_key(self.prefix, task_id) for task_id in task_ids]

        def read(pipe: Pipeline) -> None:  # GETs in a pipeline, not MGET: the keys live in different slots
            for key in keys:
                pipe.get(key)

        return [_split(raw)[1] for raw in self._conn.run_many([], extra=read)]

    def wait(self, task_id: str, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        state, record = self._read(task_id)
        while state not in _FINAL:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if self._block(task_id, remaining):
                # Woken by a final write: read it and pass the token on to the next waiter in one round trip.
                state, record = self._read_and_pass_on(task_id)
            else:
                state, record = self._read(task_id)
        return record

    async def aget(self, task_id: str) -> bytes | None:
        return _split(await self._conn.aio.get(result_key(self.prefix, task_id)))[1]

    async def async_wait(self, task_id: str, timeout: float) -> bytes | None:
        aio = self._conn.aio
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        key, notify = result_key(self.prefix, task_id), notify_key(self.prefix, task_id)
        state, record = _split(await aio.get(key))
        while state not in _FINAL:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            # The pop, then the read (passing the token on to the next waiter), in one round trip.
            _, raw = await aio.block_then_run(
                [notify], max(MIN_BLOCK, remaining), "pass_on", [key, notify], [self._ttl]
            )
            state, record = _split(raw)
        return record

    async def async_changed(self, task_id: str, last: bytes | None, timeout: float) -> bytes | None:
        """Pushed: the stream marks the record watched (``watch.lua``, which reads it too), and while it is,
        every write pushes a token onto ``{prefix:r:ID}:changed``; the stream BLPOPs that list and the
        final write's ``notify`` list together."""
        aio = self._conn.aio
        key, notify = result_key(self.prefix, task_id), notify_key(self.prefix, task_id)
        block = max(MIN_BLOCK, min(timeout, self.max_block))
        mark = _ms(block + self.socket_timeout)  # outlives the pop that follows
        state, record = _split(await aio.run("watch", [key, watch_key(self.prefix, task_id)], [mark]))
        if record != last or state in _FINAL:
            return record
        changed = changed_key(self.prefix, task_id)
        _, raw = await aio.block_then_run([changed, notify], block, "pass_on", [key, notify], [self._ttl])
        return _split(raw)[1]

    def forget(self, task_id: str) -> None:
        keys = (result_key(self.prefix, task_id), notify_key(self.prefix, task_id))
        self._conn.call(lambda: self._conn.client.delete(*keys))

    def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        return bool(self._conn.run("lease_acquire", [lease_key(self.prefix, name)], [owner, _ms(ttl)]))

    def lease_holder(self, name: str) -> str | None:
        owner = cast("bytes | None", self._conn.command("GET", lease_key(self.prefix, name)))
        return None if owner is None else owner.decode()

    def release_lease(self, name: str, owner: str) -> None:
        self._conn.run("lease_release", [lease_key(self.prefix, name)], [owner])

    def claim(self, key: str, ttl: float) -> bool:
        name = claim_key(self.prefix, key)
        return bool(self._conn.call(lambda: self._conn.client.set(name, b"1", px=_ms(ttl), nx=True)))

    def unclaim(self, key: str) -> None:
        name = claim_key(self.prefix, key)
        self._conn.call(lambda: self._conn.client.delete(name))

    def get_value(self, key: str) -> bytes | None:
        name = value_key(self.prefix, key)
        return cast("bytes | None", self._conn.call(lambda: self._conn.client.get(name)))

    def set_value(self, key: str, value: bytes, ttl: float | None = None) -> None:
        name = value_key(self.prefix, key)
        px = None if ttl is None else _ms(ttl)
        self._conn.call(lambda: self._conn.client.set(name, value, px=px))

    def delete_value(self, key: str) -> None:
        name = value_key(self.prefix, key)
        self._conn.call(lambda: self._conn.client.delete(name))

    def gather(self, key: str, index: int, value: bytes, ttl: float) -> int:
        name = gather_key(self.prefix, key)

        def add(pipe: Pipeline) -> None:
            pipe.hset(name, str(index), value)
            pipe.pexpire(name, _ms(ttl))
            pipe.hlen(name)

        return int(self._conn.run_many([], transaction=True, extra=add)[2])

    def gathered(self, key: str) -> dict[int, bytes]:
        name = gather_key(self.prefix, key)
        raw = cast("dict[bytes, bytes]", self._conn.call(lambda: self._conn.client.hgetall(name)))
        return {int(index): value for index, value in raw.items()}

    def delete_gather(self, key: str) -> None:
        name = gather_key(self.prefix, key)
        self._conn.call(lambda: self._conn.client.delete(name))

    def take_token(self, bucket: str, rate: float, burst: float) -> float:
        wait = self._conn.run("token_take", [bucket_key(self.prefix, bucket)], [repr(rate), repr(burst)])
        return float(wait) / 1000.0

    def append_events(self, batch: bytes, ttl: float) -> None:
        key = events_key(self.prefix)

        def write(pipe: Pipeline) -> None:
            # Stream ids are the server's milliseconds: trimming by MINID drops entries older than ttl.
            pipe.xadd(key, {"b": batch}, maxlen=MAX_BATCHES, approximate=True)
            pipe.xtrim(key, minid=int((time.time() - ttl) * 1000), approximate=False)

        self._conn.run_many([], extra=write)

    def read_events(self, after: str | None, limit: int) -> list[tuple[str, bytes]]:
        key = events_key(self.prefix)
        start = "-" if after is None else f"({after}"
        # The raw reply: [[id, [b"b", batch]], ...], bytes throughout.
        entries = cast("list[list[Any]]", self._conn.command("XRANGE", key, start, "+", "COUNT", limit))
        return [(entry_id.decode(), _batch(fields)) for entry_id, fields in entries]

    def newest_events(self, limit: int) -> list[tuple[str, bytes]]:
        key = events_key(self.prefix)
        entries = cast("list[list[Any]]", self._conn.command("XREVRANGE", key, "+", "-", "COUNT", limit))
        return [(entry_id.decode(), _batch(fields)) for entry_id, fields in reversed(entries)]

    def add_counts(self, key: str, counts: Mapping[str, float]) -> None:
        if not counts:
            return
        name = counts_key(self.prefix, key)

        def add(pipe: Pipeline) -> None:
            for field, value in counts.items():
                pipe.hincrbyfloat(name, field, value)

        self._conn.run_many([], transaction=True, extra=add)

    def counts(self, key: str) -> dict[str, float]:
        raw = self._conn.command("HGETALL", counts_key(self.prefix, key))  # RESP2: [field, value, field, ...]
        pairs = raw.items() if isinstance(raw, dict) else zip(raw[::2], raw[1::2], strict=True)
        return {bytes(field).decode(): float(value) for field, value in pairs}

    def last_event_cursor(self) -> str | None:
        key = events_key(self.prefix)
        entries = cast("list[tuple[bytes, object]]", self._conn.command("XREVRANGE", key, "+", "-", "COUNT", 1))
        return entries[0][0].decode() if entries else None

    def close(self) -> None:
        self._conn.close()

    async def aclose(self) -> None:
        await self._conn.aclose()

    def _write_call(self, task_id: str, state: State, record: bytes, ttl: float) -> ScriptCall:
        """The result_set.lua call storing a record (a final state leaves one wake-up token, others clear them;
        any write leaves a token for a stream watching the record)."""
        keys = [
            result_key(self.prefix, task_id),
            notify_key(self.prefix, task_id),
            watch_key(self.prefix, task_id),
            changed_key(self.prefix, task_id),
        ]
        ttl_ms = _ms(ttl)
        final = "1" if state in FINAL_STATES else "0"
        args = [
            state.value,
            state.value.encode() + b"\n" + record,
            ttl_ms,
            final,
            min(ttl_ms, int(self.notify_ttl * 1000)),
        ]
        return "result_set", keys, args

    def _read(self, task_id: str) -> tuple[bytes | None, bytes | None]:
        """The stored (state, record), or (None, None)."""
        key = result_key(self.prefix, task_id)
        # decode_responses is off, so redis-py hands back bytes; its stubs cannot know that.
        return _split(cast("bytes | None", self._conn.command("GET", key)))

    def _block(self, task_id: str, seconds: float) -> bool:
        """BLPOP the wake-up list for up to ``seconds``; True when a token was taken."""
        notify = notify_key(self.prefix, task_id)
        wait = max(MIN_BLOCK, min(seconds, self._conn.max_block))
        return self._conn.call(lambda: self._conn.blocking.blpop([notify], timeout=wait)) is not None

    def _read_and_pass_on(self, task_id: str) -> tuple[bytes | None, bytes | None]:
        """Read the record, and put back the token this waiter took so the next waiter on the id wakes too."""
        notify = notify_key(self.prefix, task_id)
        key = result_key(self.prefix, task_id)

        def read_and_push(pipe: Pipeline) -> None:
            pipe.get(key)
            pipe.rpush(notify, b"1")
            pipe.ltrim(notify, 0, 0)
            pipe.pexpire(notify, int(self.notify_ttl * 1000))

        raw = self._conn.run_many([], extra=read_and_push)[0]
        return _split(raw)


def _batch(fields: Any) -> bytes:
    """The batch of one stream entry: raw ``[b"b", batch]``, or ``{b"b": batch}`` from redis-py's cluster client."""
    return cast("bytes", fields[b"b"] if isinstance(fields, dict) else fields[1])


def _split(raw: bytes | None) -> tuple[bytes | None, bytes | None]:
    """(state, record) of a stored ``STATE\\nrecord`` string, or (None, None)."""
    if raw is None:
        return None, None
    state, _, record = raw.partition(b"\n")
    return state, record


def _ms(seconds: float) -> int:
    """Seconds as a Redis PX argument: whole milliseconds, at least 1 (0 would be an error)."""
    return max(1, int(seconds * 1000))
