"""RedisBroker: the broker contract on Redis, for workers on many machines.

Python here is thin: every multi-step operation is one Lua script in ``scripts/`` (one atomic
step on the server, one round trip), each touching the keys of one queue's hash slot, so the
layout works on Redis Cluster. ``docs/redis.md`` describes the keys, the scripts, blocking reserve,
connection faults and which persistence settings make an enqueued task durable.

Times that decide leases and dead letters are the server's clock (``TIME`` inside the scripts), so
workers with skewed clocks agree; an ``eta`` is the producer's Unix time, compared with the server's.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Collection, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, cast

from redis.client import Pipeline
from redis.cluster import RedisCluster

from conveyor.brokers._stalls import IDLE_WAKE
from conveyor.brokers.base import REQUEUES_PER_DELIVERY, Broker, DeadLetter, Delivery, Envelope, QueueStats, WorkerInfo
from conveyor.brokers.redis.claims import KeyIndex
from conveyor.brokers.redis.connection import (
    BROKER_ONLY_PARAMS,
    GLOBAL_SCRIPTS,
    QUEUE_SCRIPTS,
    RedisConnection,
    ScriptCall,
    split_url,
)
from conveyor.brokers.redis.enqueue import MessageStore
from conveyor.brokers.redis.keys import QueueKeys, global_keys, marker_pattern, queue_keys, queue_of_marker, wake_key
from conveyor.brokers.redis.topology import parse, take_params
from conveyor.errors import ConfigurationError, DuplicateTaskId

if TYPE_CHECKING:
    from conveyor.backends.base import ResultBackend

#: Shortest blocking wait in seconds: Redis reads a BLPOP timeout in milliseconds and 0 means forever.
MIN_BLOCK = 0.002
#: Messages each kind of recovery moves per script call (RECOVER_BATCH in _common.lua).
RECOVER_BATCH = 1000
#: "No eta or lease deadline ahead": the wait is bounded by the caller's timeout and max_block only.
INF = float("inf")
#: Milliseconds a stop's wake-up token lives if no pop takes it (see RedisBroker.stop_waiting).
WAKE_TOKEN_TTL_MS = 10_000
#: Seconds added to a wait for the next eta or lease deadline, so the wake-up finds it due.
DUE_SLACK = 0.001
#: Longest blocking wait on Redis Cluster for a reserve over several queues: a BLPOP cannot span
#: slots, so it waits on the first queue's signal only and looks at the others this often.
CLUSTER_POLL = 0.1


class RedisBroker(Broker):
    """A broker on Redis; ``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://`` and ``redis+cluster://``
    URLs (``topology.py``) with an optional ``prefix=``.

    Args:
        url: a redis-py URL; its ``prefix`` query parameter (default ``conveyor``) starts every key;
            ``wait=N`` (with ``wait_timeout=`` seconds, default 1) makes every enqueue wait until N
            replicas hold it (``WAIT``), raising BrokerUnavailable when fewer confirm in time.
        max_deliveries: deliveries after which an unacknowledged message is dead-lettered.
        store: the app's result backend. Redis keeps every state the broker needs; a Redis store on the
            same server, database and prefix (not a Cluster: a result and its message live in different
            slots) is told so (``Store.beside_leases``), and then fences each worker's result write by
            the message's lease token in the write's own script.
        retry_for: overrides :attr:`retry_for` for this broker.
    """

    #: Seconds an operation keeps retrying connection errors (backoff 0.05 s doubling to 1 s) before
    #: it raises BrokerUnavailable.
    retry_for: float = 5.0
    #: Seconds one command may take before it counts as a connection fault.
    socket_timeout: float = 10.0
    #: Seconds to open a connection.
    connect_timeout: float = 2.0
    #: Longest single blocking wait in seconds; a longer reserve timeout waits in several steps.
    max_block: float = 5.0

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        max_deliveries: int = 5,
        store: ResultBackend | None = None,
        retry_for: float | None = None,
    ) -> None:
        super().__init__(url, max_deliveries=max_deliveries)
        client_url, self.prefix, self.url = split_url(url)
        client_url, confirm = _confirm_option(client_url)
        if confirm is not None and parse(client_url).clustered:  # before RedisCluster connects to its nodes
            raise ConfigurationError("wait= (replica confirmation of enqueues) is not offered on Redis Cluster yet")
        self._conn = RedisConnection(
            client_url,
            self.url,
            retry_for=self.retry_for if retry_for is None else retry_for,
            socket_timeout=self.socket_timeout,
            connect_timeout=self.connect_timeout,
            max_block=self.max_block,
            scripts=QUEUE_SCRIPTS + GLOBAL_SCRIPTS,
        )
        if store is not None and not self._conn.clustered and store.location() == f"{client_url}#{self.prefix}":
            store.beside_leases()
        self._global = global_keys(self.prefix)
        self._claims = KeyIndex(self._conn, self.prefix)
        self._store = MessageStore(self._conn, self.prefix, self._claims, confirm)
        self._wake_key: str | None = None  # the list the last blocked pop of this process waited on too
        self._wake_pid, self._wake_id = 0, ""

    def __repr__(self) -> str:
        return f"RedisBroker({self.url!r}, prefix={self.prefix!r})"

    # -- messages -----------------------------------------------------------------------------

    def enqueue(self, envelopes: Sequence[Envelope]) -> list[str]:
        if not envelopes:
            return []
        if len(envelopes) == 1 and envelopes[0].key is None:  # delay(): skip the scan for keys
            self._store.store(envelopes)
            return [envelopes[0].id]
        if any(e.key is not None for e in envelopes):
            answer, fresh = self._claims.claim(envelopes)
        else:
            answer, fresh = [e.id for e in envelopes], list(envelopes)
        if fresh:
            try:
                self._store.store(fresh)
            except DuplicateTaskId:  # nothing was stored: give back the keys this call just claimed
                for env in fresh:
                    if env.key is not None:
                        self._claims.release(env.queue, [env.key.encode(), env.id.encode()])
                raise
        return answer

    def aenqueue(self, envelopes: Sequence[Envelope]) -> Coroutine[Any, Any, list[str]]:
        """On the event loop for ``adelay()``'s case (one message, no key, a queue this process registered).

        Every other batch (keys to claim, several queues, a queue's first enqueue) runs :meth:`enqueue`
        in a thread: those take several round trips and happen once per queue or rarely. Not a coroutine
        itself: it hands over the one that does the work (one frame fewer to enter and resume per call).
        """
        if len(envelopes) == 1 and envelopes[0].key is None and self._store.is_known(envelopes[0].queue):
            return self._store.astore_one(envelopes[0])
        return super().aenqueue(envelopes)

    def reserve(
        self, queues: Sequence[str], n: int, *, owner: str, lease: float, timeout: float = 0.0
    ) -> list[Delivery]:
        return self.ack_and_reserve((), queues, n, owner=owner, lease=lease, timeout=timeout)

    def ack_and_reserve(
        self,
        acks: Sequence[Delivery],
        queues: Sequence[str],
        n: int,
        *,
        owner: str,
        lease: float,
        timeout: float = 0.0,
    ) -> list[Delivery]:
        if n <= 0 or not queues:
            if acks:
                self.ack(acks)
            return []
        deadline = time.monotonic() + timeout
        out, next_due = self._ack_then_reserve_once(acks, queues, n, owner, lease)
        while not out:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            # Named before the flag is read: a stop_waiting() after the read pushes to this key (see there).
            self._wake_key = wake = self._wake_key_of(queues[0])
            if self.waits_stopped:
                break
            wait = min(remaining, _wake_in(next_due))
            out, next_due = self._wait_then_reserve(queues, n, owner, lease, wait, wake)
        return out

    def stop_waiting(self) -> None:
        """Also end a blocked pop in progress: a token to the list only this process's pop waits on.

        A reserve names that list before it reads the flag, so a stop between the two finds the
        list named and its token ends the pop at once (a token pushed before the pop began is popped at once).
        """
        super().stop_waiting()
        key = self._wake_key
        if key is not None:
            self._conn.push_token(key, WAKE_TOKEN_TTL_MS)

    def _wake_key_of(self, queue: str) -> str:
        """This process's own wake-up list, in ``queue``'s slot (a blocked pop's keys share one slot on a Cluster)."""
        if self._wake_pid != os.getpid():  # forked children each get their own
            self._wake_pid, self._wake_id = os.getpid(), f"{os.getpid()}-{os.urandom(4).hex()}"
        return wake_key(self._keys(queue), self._wake_id)

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        groups = _by_queue(deliveries)
        calls = [self._call("ack", q, *_lease_pairs(ds)) for q, ds in groups.items()]
        self._release(list(groups), self._run_each(calls))

    def nack(self, delivery: Delivery, *, delay: float = 0.0, body: bytes | None = None) -> None:
        keys = self._keys(delivery.queue)
        args = [keys.message, delivery.id, delivery.token, repr(float(delay)), *_body_args(body)]
        self._conn.run("nack", keys.script_keys, args)

    def extend(self, deliveries: Sequence[Delivery], lease: float, running: Collection[str] = ()) -> list[str]:
        groups = _by_queue(deliveries)
        calls = [
            self._clock_call("extend", q, repr(float(lease)), *_lease_triples(ds, running)) for q, ds in groups.items()
        ]
        lost = {message_id.decode() for result in self._run_each(calls) for message_id in result}
        return [d.id for d in deliveries if d.id in lost]

    def dead_letter(self, delivery: Delivery, reason: str, body: bytes | None = None) -> None:
        keys = self._keys(delivery.queue)
        args = [keys.message, delivery.id, delivery.token, reason, *_body_args(body)]
        released = self._conn.run("dead_letter", keys.script_keys, args)
        self._claims.release(delivery.queue, released)

    def release_owner(self, owner: str, running: Collection[str] | None = None) -> int:
        queues = self._queues()
        known = ["0"] if running is None else ["1", *running]
        calls = [self._call("release_owner", q, owner, str(self.max_deliveries), *known) for q in queues]
        results = self._run_each(calls)
        self._release(queues, [released for _, released in results])
        return sum(int(count) for count, _ in results)

    def extend_owner(self, owner: str, lease: float) -> int:
        calls = [self._call("extend_owner", q, owner, repr(float(lease))) for q in self._queues()]
        return sum(int(count) for count in self._run_each(calls))

    def recover(self) -> int:
        total, queues = 0, self._queues()
        while queues:  # a call moves at most RECOVER_BATCH of each kind: go on where one was full
            results = self._run_each([self._clock_call("recover", q, *self._bounds()) for q in queues])
            self._release(queues, [released for _, released in results])
            total += sum(int(moved) for moved, _ in results)
            queues = [q for q, (moved, _) in zip(queues, results, strict=True) if int(moved) >= RECOVER_BATCH]
        return total

    def cancel(self, ids: Sequence[str]) -> list[str]:
        if not ids:
            return []
        queues = self._queues()
        results = self._run_each([self._call("cancel", q, *ids) for q in queues])
        self._release(queues, [released for _, released in results])
        gone = {message_id.decode() for cancelled, _ in results for message_id in cancelled}
        return [i for i in ids if i in gone]

    def purge(self, queue: str) -> int:
        count, released = self._conn.run(*self._call("purge", queue))
        self._claims.release(queue, released)
        return int(count)

    # -- dead letters -------------------------------------------------------------------------

    def dead_letters(self, limit: int = 100, queue: str | None = None) -> list[DeadLetter]:
        queues = self._queues() if queue is None else [queue]
        rows: list[tuple[float, int, DeadLetter]] = []
        lists = self._run_each([self._call("dead_list", q, str(limit)) for q in queues])
        for name, flat in zip(queues, lists, strict=True):
            for i in range(0, len(flat), 6):
                message_id, body, reason, dead_at, deliveries, seq = flat[i : i + 6]
                letter = DeadLetter(message_id.decode(), name, body, reason.decode(), float(dead_at), int(deliveries))
                rows.append((letter.dead_at, int(seq), letter))
        rows.sort(key=lambda row: row[:2])
        return [letter for _, _, letter in rows[:limit]]

    def requeue_dead(self, ids: Sequence[str] | None = None) -> int:
        return self._for_dead("requeue_dead", ids)

    def purge_dead(self, ids: Sequence[str] | None = None) -> int:
        return self._for_dead("purge_dead", ids)

    # -- observability ------------------------------------------------------------------------

    def stats(self) -> list[QueueStats]:
        queues = self._queues()

        def count(pipe: Pipeline) -> None:
            for q in queues:
                keys = self._keys(q)
                for key in (keys.ready, keys.scheduled, keys.inflight, keys.dead):
                    pipe.zcard(key)

        counts = self._conn.run_many([], extra=count)
        return [QueueStats(q, *counts[i * 4 : i * 4 + 4]) for i, q in enumerate(queues)]

    def register_worker(self, info: WorkerInfo, ttl: float) -> None:
        keys = [self._global.workers, self._global.workers_info]
        self._conn.run("register_worker", keys, [info.id, json.dumps(info.to_dict()), repr(float(ttl))])

    def unregister_worker(self, worker_id: str) -> None:
        def forget(pipe: Pipeline) -> None:
            pipe.zrem(self._global.workers, worker_id)
            pipe.hdel(self._global.workers_info, worker_id)

        self._conn.run_many([], transaction=True, extra=forget)

    def workers(self) -> list[WorkerInfo]:
        found = self._conn.run("workers", [self._global.workers, self._global.workers_info], [])
        return sorted((WorkerInfo.from_dict(json.loads(raw)) for raw in found), key=lambda w: w.id)

    def ping(self) -> None:
        self._conn.command("PING")

    def close(self) -> None:
        self._conn.close()

    async def aclose(self) -> None:
        await self._conn.aclose()

    # -- helpers ------------------------------------------------------------------------------

    def _keys(self, queue: str) -> QueueKeys:
        return queue_keys(self.prefix, queue)

    def _call(self, script: str, queue: str, *args: str) -> ScriptCall:
        """A per-queue script call: the queue's KEYS, its message prefix, then ``args``."""
        keys = self._keys(queue)
        return (script, keys.script_keys, [keys.message, *args])

    def _clock_call(self, script: str, queue: str, *args: str) -> ScriptCall:
        """Like :meth:`_call`, with the queue's ``seen`` key as KEYS[7]: the scripts that judge or extend leases."""
        keys = self._keys(queue)
        return (script, keys.clock_keys, [keys.message, *args])

    def _bounds(self) -> tuple[str, str]:
        """``max_deliveries`` and the uncounted requeues that bury a message, for reserve.lua and recover.lua."""
        return str(self.max_deliveries), str(REQUEUES_PER_DELIVERY * self.max_deliveries)

    def _run_each(self, calls: Sequence[ScriptCall]) -> list[Any]:
        """Run per-queue scripts: a single one directly (no pipeline overhead), several pipelined."""
        if len(calls) == 1:
            return [self._conn.run(*calls[0])]
        return self._conn.run_many(calls) if calls else []

    def _ack_then_reserve_once(
        self, acks: Sequence[Delivery], queues: Sequence[str], n: int, owner: str, lease: float
    ) -> tuple[list[Delivery], float]:
        """ack.lua per queue and the first queue's reserve.lua in one pipeline (one round trip), then the other queues.

        A pipeline runs in order on one connection, so the acks land before the reservation. A retry
        after a lost reply is safe: an ack checks the lease token, and messages reserved by a lost
        reply come back when their lease ends.
        """
        if not acks:
            return self._reserve_once(queues, n, owner, lease, [])
        groups = _by_queue(acks)
        calls = [self._call("ack", q, *_lease_pairs(ds)) for q, ds in groups.items()]
        results = self._conn.run_many([*calls, self._reserve_call(queues[0], n, owner, lease)])
        self._release(list(groups), results[:-1])
        out: list[Delivery] = []
        next_due = self._take(queues[0], owner, results[-1], out)
        return self._reserve_once(queues[1:], n, owner, lease, out, next_due)

    def _reserve_once(
        self, queues: Sequence[str], n: int, owner: str, lease: float, out: list[Delivery], next_due: float = INF
    ) -> tuple[list[Delivery], float]:
        """Fill ``out`` from ``queues`` in order; returns it and the seconds until the next due event."""
        for queue in queues:
            if len(out) >= n:
                break
            result = self._conn.run(*self._reserve_call(queue, n - len(out), owner, lease))
            next_due = min(next_due, self._take(queue, owner, result, out))
        return out, next_due

    def _wait_then_reserve(
        self, queues: Sequence[str], n: int, owner: str, lease: float, seconds: float, wake: str
    ) -> tuple[list[Delivery], float]:
        """Block on the queues' signal lists, then reserve; the first queue's reserve rides in the same pipeline.

        An enqueue, nack or requeue pushes a token that ends the BLPOP at once, and Redis then runs the
        pipelined reserve script straight away: a wake-up costs no extra round trip.
        """
        signals = [wake] + [self._keys(q).signal for q in queues]  # first: a stop's token leaves the queues' own
        wait = max(MIN_BLOCK, min(seconds, self._conn.max_block))
        if self._conn.clustered and len(queues) > 1:  # one slot per BLPOP: the first queue's, polling the rest
            signals, wait = signals[:2], min(wait, CLUSTER_POLL)  # the wake-up list is in the first queue's slot
        call = self._reserve_call(queues[0], n, owner, lease)
        result = self._conn.call(lambda: self._conn.block_then_run(signals, wait, *call))
        out: list[Delivery] = []
        return self._reserve_once(queues[1:], n, owner, lease, out, self._take(queues[0], owner, result, out))

    def _reserve_call(self, queue: str, n: int, owner: str, lease: float) -> ScriptCall:
        return self._clock_call("reserve", queue, owner, str(n), repr(float(lease)), *self._bounds())

    def _take(self, queue: str, owner: str, result: list[Any], out: list[Delivery]) -> float:
        """Append the deliveries of one reserve.lua result to ``out``; return its seconds to the next due event."""
        due, released, taken = result
        self._claims.release(queue, released)
        for i in range(0, len(taken), 5):
            message_id, body, priority, deliveries, token = taken[i : i + 5]
            out.append(Delivery(message_id.decode(), queue, body, int(priority), deliveries, token.decode(), owner))
        seconds = float(due)
        return INF if seconds < 0 else seconds

    def _for_dead(self, script: str, ids: Sequence[str] | None) -> int:
        """Run requeue_dead/purge_dead over every queue, for all dead letters or the given ids."""
        if ids is not None and not ids:
            return 0
        args = ["1"] if ids is None else ["0", *ids]
        return sum(int(n) for n in self._run_each([self._call(script, q, *args) for q in self._queues()]))

    def _queues(self) -> list[str]:
        if self._conn.clustered:
            return self._cluster_queues()
        # decode_responses is off, so redis-py hands back bytes; its stubs cannot know that.
        members = cast("set[bytes]", self._conn.call(lambda: self._conn.client.smembers(self._global.queues)))
        return sorted(m.decode() for m in members)

    def _cluster_queues(self) -> list[str]:
        """The registry on Redis Cluster, rebuilt from the queues' markers when its node lost it.

        The registry's node and a queue's node can lose data apart (a restart without persistence,
        a failover to a replica behind): a queue's marker then survives while its registry entry is
        gone, and enqueue.lua, seeing the marker, would never register it again. So the registry
        carries ``scanned``, set only by a rebuild: where it is missing (a new prefix, or the node
        lost it with the registry) this SCANs every primary for markers once and adds their queues.
        """

        def read(pipe: Pipeline) -> None:  # one slot, one round trip
            pipe.smembers(self._global.queues)
            pipe.exists(self._global.scanned)

        members, scanned = self._conn.run_many([], extra=read)
        names = {m.decode() for m in members}
        if not scanned:
            found = self._conn.call(self._scan_markers)
            if found:
                self._conn.call(lambda: self._conn.client.sadd(self._global.queues, *found))
            self._conn.call(lambda: self._conn.client.set(self._global.scanned, b"1"))
            names |= found
        return sorted(names)

    def _scan_markers(self) -> set[str]:
        """Every queue whose ``registered`` marker is on some primary of the cluster (one SCAN per node)."""
        cluster = cast("RedisCluster", self._conn.client)
        pattern = marker_pattern(self.prefix)
        found: set[str] = set()
        for node in cluster.get_primaries():  # type: ignore[no-untyped-call]
            client = cluster.get_redis_connection(node)
            found.update(queue_of_marker(self.prefix, key) for key in client.scan_iter(match=pattern, count=1000))
        return found

    def _release(self, queues: Sequence[str], released: Sequence[Sequence[bytes]]) -> None:
        for queue, pairs in zip(queues, released, strict=True):
            self._claims.release(queue, pairs)


def _confirm_option(url: str) -> tuple[str, tuple[int, float] | None]:
    """The URL without ``wait=`` and ``wait_timeout=``, and (replicas, seconds) when ``wait`` asks for replicas.

    Raises:
        ConfigurationError: a value that is not a number, or a timeout that is not positive.
    """
    rest, taken = take_params(url, BROKER_ONLY_PARAMS)
    try:
        replicas = int(taken.get("wait", "0") or "0")
        timeout = float(taken.get("wait_timeout", "1") or "1")
    except ValueError:
        raise ConfigurationError(f"wait= and wait_timeout= take numbers in a Redis URL, not {taken}") from None
    if replicas < 0 or not timeout > 0:
        raise ConfigurationError(f"wait= needs replicas >= 0 and wait_timeout= seconds > 0, not {taken}")
    return rest, ((replicas, timeout) if replicas else None)


def _wake_in(next_due: float) -> float:
    """Seconds a blocked reserve may wait: until the next eta or lease deadline, and at most IDLE_WAKE while one exists.

    The reserve.lua that follows the wait stamps the queue's ``seen``: an idle reserver that slept
    through a whole lease would look like a stall and postpone the very lease it waits to recover.
    """
    return INF if next_due == INF else min(next_due + DUE_SLACK, IDLE_WAKE)


def _by_queue(deliveries: Sequence[Delivery]) -> dict[str, list[Delivery]]:
    """Group deliveries by queue (first-seen order): each queue's keys live in their own slot."""
    groups: dict[str, list[Delivery]] = {}
    for delivery in deliveries:
        groups.setdefault(delivery.queue, []).append(delivery)
    return groups


def _lease_triples(deliveries: Sequence[Delivery], running: Collection[str]) -> list[str]:
    """``id, token, running ('1' or '0')`` per delivery, as extend.lua reads them."""
    args: list[str] = []
    for delivery in deliveries:
        args += [delivery.id, delivery.token, "1" if delivery.id in running else "0"]
    return args


def _lease_pairs(deliveries: Sequence[Delivery]) -> list[str]:
    """``id, token`` per delivery, as ack.lua reads them."""
    args: list[str] = []
    for delivery in deliveries:
        args += [delivery.id, delivery.token]
    return args


def _body_args(body: bytes | None) -> list[str | bytes]:
    """``has_body, body`` as nack.lua and dead_letter.lua read them (an empty body is still a body)."""
    return ["0", b""] if body is None else ["1", body]
