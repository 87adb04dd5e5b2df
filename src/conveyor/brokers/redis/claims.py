"""Idempotency keys on Redis: a global claim index that is a verified hint, not the truth.

``enqueue(key=...)`` needs "is a message with this key pending or running?" answered and the new
message stored in one step. Keys are global (the same key on two queues is the same work), but a
queue's messages live in the queue's hash slot, and a Redis Cluster script may touch one slot only.
So the index ``{prefix}:keys`` (key -> holder queue and id) lives in the global slot and enqueue
takes one more round trip:

1. ``claim.lua`` claims every key that is free and answers the holder of every key that is not.
2. A holder is trusted only if its message still lives (``alive.lua`` in the holder's queue slot);
   a stale claim (its message finished, or its producer died between claim and store) is taken over
   with a compare-and-set (``claim.lua`` again), so a stale claim can never block a key.
3. The caller stores the messages that won their key (``enqueue.lua``).

ack, dead-letter and purge release the keys of finished messages in a second call that deletes a
claim only while it still names that message. The trade-off: two producers enqueueing the same key
within one round trip of each other (between step 1 and step 3) may both store their message. That
is a duplicate (at-least-once still holds), never a lost task; we chose it over a grace period in
which a stale claim would swallow new enqueues.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from conveyor.brokers.base import Envelope
from conveyor.brokers.redis.connection import RedisConnection, ScriptCall
from conveyor.brokers.redis.keys import global_keys, holder, parse_claim, queue_keys


class KeyIndex:
    """The index ``{prefix}:keys`` of idempotency keys: claims keys for new messages, frees finished ones."""

    def __init__(self, conn: RedisConnection, prefix: str) -> None:
        self._conn = conn
        self._prefix = prefix
        self._index = global_keys(prefix).keys

    def claim(self, envelopes: Sequence[Envelope]) -> tuple[list[str], list[Envelope]]:
        """Claim the keys of ``envelopes``.

        Returns:
            The id to answer for each envelope (its own, or the live holder's), and the envelopes to store.
        """
        answer = [e.id for e in envelopes]
        keyed = [i for i, e in enumerate(envelopes) if e.key is not None]
        held = self._claim([(envelopes[i], b"") for i in keyed])
        won = {
            holder(envelopes[i].queue, envelopes[i].id) for i, current in zip(keyed, held, strict=True) if not current
        }
        contested = [(i, current) for i, current in zip(keyed, held, strict=True) if current]
        skip = self._settle(envelopes, contested, won, answer)
        return answer, [e for i, e in enumerate(envelopes) if i not in skip]

    def release(self, queue: str, released: Sequence[bytes]) -> None:
        """Free the keys a script reported (flat ``key, id, ...``) unless a newer message took them over."""
        if not released:
            return
        args: list[bytes] = []
        for key, message_id in zip(released[::2], released[1::2], strict=True):
            args += [key, holder(queue, message_id.decode())]
        self._conn.run("release_keys", [self._index], args)

    def _settle(
        self, envelopes: Sequence[Envelope], contested: list[tuple[int, bytes]], won: set[bytes], answer: list[str]
    ) -> set[int]:
        """Answer the live holder of each contested key, take stale claims over; return the indexes not to store.

        A key held by another envelope of this batch that won its claim just now answers that one.
        A key still held by this very envelope (a retry after a failed store) is checked like any other,
        so the retry stores the message unless the first attempt did.
        """
        skip: set[int] = set()
        unsure: list[tuple[int, bytes, tuple[str, str]]] = []
        for i, claim in contested:
            queue, message_id = parse_claim(claim)
            if holder(queue, message_id) in won:
                answer[i] = message_id
                skip.add(i)
            else:
                unsure.append((i, claim, (queue, message_id)))
        stale: list[tuple[int, bytes]] = []
        alive = self._alive([who for _, _, who in unsure])
        for (i, claim, (_, message_id)), live in zip(unsure, alive, strict=True):
            if live:
                answer[i] = message_id
                skip.add(i)
            else:
                stale.append((i, claim))
        taken = self._claim([(envelopes[i], claim) for i, claim in stale])
        for (i, _), current in zip(stale, taken, strict=True):
            if current:  # someone else took it over first: theirs is the live one
                answer[i] = parse_claim(current)[1]
                skip.add(i)
        return skip

    def _claim(self, wanted: Sequence[tuple[Envelope, bytes]]) -> list[bytes]:
        """Run claim.lua: '' per key now claimed, else the claim that holds it."""
        if not wanted:
            return []
        args: list[str | bytes] = []
        for env, expected in wanted:
            assert env.key is not None
            args += [env.key, holder(env.queue, env.id), expected]
        result: list[bytes] = self._conn.run("claim", [self._index], args)
        return result

    def _alive(self, holders: Sequence[tuple[str, str]]) -> list[bool]:
        """Whether each (queue, id) message is pending or running; one pipelined script per queue."""
        if not holders:
            return []
        by_queue: dict[str, list[str]] = {}
        for queue, message_id in holders:
            by_queue.setdefault(queue, []).append(message_id)
        calls: list[ScriptCall] = []
        for queue, ids in by_queue.items():
            keys = queue_keys(self._prefix, queue)
            calls.append(("alive", keys.script_keys, [keys.message, *ids]))
        results: list[Any] = self._conn.run_many(calls)
        flags = {
            (queue, message_id): bool(flag)
            for (queue, ids), row in zip(by_queue.items(), results, strict=True)
            for message_id, flag in zip(ids, row, strict=True)
        }
        return [flags[h] for h in holders]
