"""Storing messages on Redis: enqueue.lua per queue, refused task ids, and the queue registry.

Two things here reach beyond one queue's slot, so they cannot live in ``enqueue.lua`` alone:

- The registry ``{prefix}:queues`` (what ``stats``, ``cancel``/``revoke``, dead letters, ``recover``
  and ``release_owner`` look at) is in the global slot. A process registers a queue in the same
  MULTI as its first enqueue to it; after that, enqueue.lua reports when the queue's marker
  ``{prefix:q:NAME}:registered`` is gone (the server lost its data: restart without persistence,
  failover, FLUSHDB) and the queue is registered again before ``enqueue`` returns (issue 11, item 7).
- A batch over several queues is one script per queue, so a reused task id is looked up in every
  queue of the batch first, and a refusal that comes later undoes the other queues' part (item 12).
"""

from __future__ import annotations

import asyncio
import collections
import os
from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.client import Pipeline
from redis.exceptions import ResponseError

from conveyor.brokers.base import Envelope
from conveyor.brokers.redis.aio import AsyncRedis
from conveyor.brokers.redis.claims import KeyIndex
from conveyor.brokers.redis.connection import RedisConnection
from conveyor.brokers.redis.keys import QueueKeys, global_keys, queue_keys
from conveyor.errors import DuplicateTaskId


class MessageStore:
    """Runs enqueue.lua, raises DuplicateTaskId for a held id and keeps the queue registry whole."""

    def __init__(
        self, conn: RedisConnection, prefix: str, claims: KeyIndex, confirm: tuple[int, float] | None = None
    ) -> None:
        self._conn = conn
        #: (replicas, seconds): every enqueue waits for that many replicas to hold it (``wait=`` in the URL).
        self._confirm = confirm
        self._prefix = prefix
        self._registry = global_keys(prefix).queues
        self._claims = claims
        #: Queues this process registered with its first enqueue to them (one MULTI); later enqueues
        #: skip that, and enqueue.lua tells when the server lost the registry.
        self._known: set[str] = set()
        #: Queue -> its keys and the packed start of its one-message enqueue.lua call (:meth:`astore_one`).
        self._hot: dict[str, tuple[QueueKeys, bytes]] = {}
        self._aio: AsyncRedis | None = None  #: ``conn.aio``, kept (the property is a call)

    def store(self, envelopes: Sequence[Envelope]) -> None:
        """Store ``envelopes``: all or none.

        Raises:
            DuplicateTaskId: an id its queue still holds, or repeated in the batch; nothing is stored.
        """
        attempt = os.urandom(8)  # tells enqueue.lua a retry of this call (a lost reply) from a reused id
        queue = envelopes[0].queue
        if queue in self._known and (len(envelopes) == 1 or all(e.queue == queue for e in envelopes)):
            keys = queue_keys(self._prefix, queue)  # delay(): one EVALSHA, nothing else
            args = enqueue_args(keys, attempt, envelopes)
            if self._confirm is None:
                self._check(queue, self._conn.run("enqueue", keys.enqueue_keys, args))
            else:  # the EVALSHA and a WAIT, pipelined
                self._check(queue, self._conn.run_confirmed("enqueue", keys.enqueue_keys, args, *self._confirm))
            return
        groups: dict[str, list[Envelope]] = {}
        for env in envelopes:
            groups.setdefault(env.queue, []).append(env)
        self._store_many(groups, attempt)
        if self._confirm is not None:
            self._conn.confirm(queue_keys(self._prefix, queue).registered, *self._confirm)

    def is_known(self, queue: str) -> bool:
        """True once this process registered ``queue`` (its enqueues are then one script call)."""
        return queue in self._known

    async def astore_one(self, envelope: Envelope) -> list[str]:
        """Store one message of a known queue from a coroutine: one EVALSHA on the loop's connection; its id.

        The command is packed here: the queue's part once (:meth:`AsyncRedis.script_head`), the
        message's part per call (:func:`packed_enqueue_one`). A generated id is its own attempt
        (see there): no random bytes to draw. With the loop's lane open this coroutine awaits the
        reply itself (:meth:`AsyncRedis.send_packed`): ``adelay`` runs two coroutines, its own and this.

        Raises:
            DuplicateTaskId: an id its queue still holds; nothing is stored.
        """
        aio = self._aio
        if aio is None:
            aio = self._aio = self._conn.aio
        random = os.urandom(8) if envelope.explicit_id else None
        hot = self._hot.get(envelope.queue)
        if hot is None and self._confirm is None and not aio.clustered:  # (with wait= or on Cluster: run())
            keys = queue_keys(self._prefix, envelope.queue)
            hot = self._hot[envelope.queue] = keys, aio.script_head("enqueue", keys.enqueue_keys, [keys.message], 6)
        if hot is not None:
            keys, head = hot
            sent = aio.send_packed(packed_enqueue_one(head, random, envelope))
            try:
                reply = None if sent is None else await sent
            except (redis.ConnectionError, redis.TimeoutError):  # the lane failed: run() retries on a new one
                reply = None
            if reply is None or isinstance(reply, ResponseError):  # (enqueue.lua answers a list)
                argv = _attempt_args(keys, random, envelope)  # the same attempt as the packed command's
                reply = await aio.run_again(reply, "enqueue", keys.enqueue_keys, argv)
        else:
            keys = queue_keys(self._prefix, envelope.queue)
            argv = _attempt_args(keys, random, envelope)
            if self._confirm is not None:
                reply = await aio.run_confirmed("enqueue", keys.enqueue_keys, argv, *self._confirm)
            else:  # Cluster: no lanes, nothing to pack
                reply = await aio.run("enqueue", keys.enqueue_keys, argv)
        duplicate, unregistered = reply
        if unregistered:  # the server lost its data: register the queue again (rare), off the loop
            await asyncio.to_thread(self._register, [envelope.queue])
        if duplicate:
            raise DuplicateTaskId(duplicate.decode())
        return [envelope.id]

    def _check(self, queue: str, result: list[bytes]) -> None:
        """Act on enqueue.lua's answer: register the queue again if its marker is gone; raise on a held id."""
        duplicate, unregistered = result
        if unregistered:
            self._register([queue])
        if duplicate:
            raise DuplicateTaskId(duplicate.decode())

    def _store_many(self, groups: dict[str, list[Envelope]], attempt: bytes) -> None:
        """Several queues, or one new to this process: the scripts and the registration in one MULTI.

        A script refuses only its own queue's part, so the ids of a batch over several queues are
        looked up first (one round trip, only for such batches). An id stored by another producer
        between that look and the MULTI is caught by its queue's script, and what the other scripts
        stored is cancelled again (an idle worker may reserve it in that instant: docs/redis.md).
        """
        if len(groups) > 1:
            self._refuse_held(groups)
        queues = list(groups)
        calls = [
            (
                "enqueue",
                queue_keys(self._prefix, q).enqueue_keys,
                enqueue_args(queue_keys(self._prefix, q), attempt, es),
            )
            for q, es in groups.items()
        ]
        new = [q for q in queues if q not in self._known]
        if self._conn.clustered:
            # No MULTI may span slots: register first (the registry, then the markers), then store.
            # A queue is in the registry before any of its messages; a producer that dies between
            # the two leaves a registered, empty queue (harmless). Not one transaction: see docs/redis.md.
            if new:
                self._conn.run_many([], extra=lambda pipe: pipe.sadd(self._registry, *new))
            results = self._conn.run_many(calls, extra=self._markers(new))
        else:
            results = self._conn.run_many(calls, transaction=True, extra=self._registration(new))
        answers = [(duplicate.decode(), int(unregistered)) for duplicate, unregistered in results[: len(calls)]]
        missing = [q for q, (_, unregistered) in zip(queues, answers, strict=True) if unregistered and q not in new]
        if missing:
            self._register(missing)
        refused = [duplicate for duplicate, _ in answers if duplicate]
        if refused:
            self._unstore({q: groups[q] for q, (duplicate, _) in zip(queues, answers, strict=True) if not duplicate})
            raise DuplicateTaskId(refused[0])
        self._known.update(new)

    def _refuse_held(self, groups: dict[str, list[Envelope]]) -> None:
        """Raise DuplicateTaskId for an id repeated in the batch or still held by its queue (one round trip)."""
        ids = [e.id for es in groups.values() for e in es]
        repeated = [i for i, count in collections.Counter(ids).items() if count > 1]
        if repeated:
            raise DuplicateTaskId(repeated[0])

        def look(pipe: Pipeline) -> None:
            for q, es in groups.items():
                for env in es:
                    pipe.exists(queue_keys(self._prefix, q).message + env.id)

        for message_id, hit in zip(ids, self._conn.run_many([], extra=look), strict=True):
            if hit:
                raise DuplicateTaskId(message_id)

    def _unstore(self, groups: dict[str, list[Envelope]]) -> None:
        """Cancel what a refused batch stored in its other queues, and free their keys (all or none)."""
        if not groups:
            return
        calls = []
        for q, es in groups.items():
            keys = queue_keys(self._prefix, q)
            calls.append(("cancel", keys.script_keys, [keys.message, *(e.id for e in es)]))
        results: list[Any] = self._conn.run_many(calls)
        for q, (_, released) in zip(groups, results, strict=True):
            self._claims.release(q, released)

    def _register(self, queues: Sequence[str]) -> None:
        """Register ``queues`` again: one pipeline, or on Cluster the registry then the markers (two slots)."""
        if self._conn.clustered:
            self._conn.run_many([], extra=lambda pipe: pipe.sadd(self._registry, *queues))
            self._conn.run_many([], extra=self._markers(queues))
        else:
            self._conn.run_many([], extra=self._registration(queues))

    def _markers(self, queues: Sequence[str]) -> Callable[[Pipeline], None]:
        """Pipeline commands that SET each queue's marker (after the SADD to the registry went through)."""

        def mark(pipe: Pipeline) -> None:
            for q in queues:
                pipe.set(queue_keys(self._prefix, q).registered, b"1")

        return mark

    def _registration(self, queues: Sequence[str]) -> Callable[[Pipeline], None]:
        """Pipeline commands that register ``queues``: SADD to the registry, then SET each queue's marker.

        The marker is set after the SADD (a pipeline runs in order, and replicas apply it in order),
        so wherever a marker exists the registry has the queue; a server that lost its data lost the
        marker too, and the next enqueue to the queue registers it again (enqueue.lua reports it).
        """

        def register(pipe: Pipeline) -> None:
            if queues:
                pipe.sadd(self._registry, *queues)
                for q in queues:
                    pipe.set(queue_keys(self._prefix, q).registered, b"1")

        return register


def enqueue_args(keys: QueueKeys, attempt: bytes, envelopes: Sequence[Envelope]) -> list[str | bytes]:
    """ARGV of enqueue.lua: ``T:m:``, the attempt, then per message id, body, priority, eta, key.

    eta is '' for now; key is '' for none, else '=' + key.
    """
    args: list[str | bytes] = [keys.message, attempt]
    for env in envelopes:
        eta = "" if env.eta is None else repr(float(env.eta))
        key = "" if env.key is None else "=" + env.key
        args += [env.id, env.body, str(env.priority), eta, key]
    return args


def _attempt_args(keys: QueueKeys, random: bytes | None, envelope: Envelope) -> list[str | bytes]:
    """:func:`enqueue_args` of one message whose attempt is ``random``, or its id (None: a generated id)."""
    return enqueue_args(keys, envelope.id.encode() if random is None else random, [envelope])


#: The packed end of a one-message enqueue.lua call with no eta and no key, by priority.
_PLAIN_ENDS = {p: b"$1\r\n%d\r\n$0\r\n\r\n$0\r\n\r\n" % p for p in range(10)}


def packed_enqueue_one(head: bytes, attempt: bytes | None, envelope: Envelope) -> bytes:
    """One message's enqueue.lua call, packed (RESP): ``head`` (the queue's part), then the attempt and the
    message's five arguments, as :func:`enqueue_args` lists them.

    ``attempt`` None: the message's id is the attempt. A generated id (``explicit_id`` False), unique
    and random, can: a message held under it can only have been stored by this very call (a retry
    after a lost reply), so it tells a retry as random bytes would. An explicit ``task_id`` cannot
    (another call may have stored it): it takes random bytes.
    """
    body = envelope.body
    if attempt is None:
        if envelope.eta is None and envelope.key is None and envelope.priority in _PLAIN_ENDS:
            # adelay(): the id twice (id and attempt), the body, a cached end: one formatting of bytes.
            ident = envelope.id.encode()
            size = len(ident)
            end = _PLAIN_ENDS[envelope.priority]
            return b"%b$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n%b" % (
                head,
                size,
                ident,
                size,
                ident,
                len(body),
                body,
                end,
            )
        attempt = envelope.id.encode()
    ident_bytes = envelope.id.encode()
    eta = b"" if envelope.eta is None else repr(float(envelope.eta)).encode()
    key = b"" if envelope.key is None else ("=" + envelope.key).encode()
    prio = str(envelope.priority).encode()
    return b"".join(
        (
            head,
            b"$%d\r\n%b\r\n" % (len(attempt), attempt),
            b"$%d\r\n%b\r\n" % (len(ident_bytes), ident_bytes),
            b"$%d\r\n" % len(body),
            body,
            b"\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(prio), prio, len(eta), eta, len(key), key),
        )
    )
