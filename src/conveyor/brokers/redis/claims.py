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
claim only while it still names that message. A claim whose message is not stored yet but that is
younger than ``LAND_WAIT`` (1 s, on the server's clock) is its producer's, one round trip from storing
it: a second producer waits for it to land (then answers it) rather than take the key over, so two
producers enqueueing one key at once store one message. A producer stalled longer than that between
claim and store may still see its key taken over: a duplicate (at-least-once holds), never a lost
task. A grace period that answered a holder without seeing it stored could swallow new enqueues.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from conveyor.brokers.base import Envelope
from conveyor.brokers.redis.connection import RedisConnection, ScriptCall
from conveyor.brokers.redis.keys import global_keys, holder, parse_claim, queue_keys

#: Seconds a fresh claim's producer gets to store its message before a second producer takes the key over.
LAND_WAIT = 1.0
#: Seconds between two looks at a holder that has not landed yet.
LAND_POLL = 0.005


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
        landing: list[tuple[int, bytes, tuple[str, str]]] = []
        for (i, claim, who), live in zip(unsure, alive, strict=True):
            if live:
                answer[i] = who[1]
                skip.add(i)
            else:
                landing.append((i, claim, who))
        for i, claim, holder_left in self._wait_to_land(landing):
            if holder_left is None:  # its producer stored it meanwhile: that one is the live holder
                answer[i] = parse_claim(claim)[1]
                skip.add(i)
            else:
                stale.append((i, claim))
        taken = self._claim([(envelopes[i], claim) for i, claim in stale])
        for (i, _), current in zip(stale, taken, strict=True):
            if current:  # someone else took it over first: theirs is the live one
                answer[i] = parse_claim(current)[1]
                skip.add(i)
        return skip

    def _wait_to_land(
        self, landing: list[tuple[int, bytes, tuple[str, str]]]
    ) -> list[tuple[int, bytes, tuple[str, str] | None]]:
        """Give each not-yet-stored holder whose claim is younger than LAND_WAIT the rest of that time to land.

        A producer stores its message one round trip after its claim; a second producer that asks in
        between must not take the key over (both would store). Each entry comes back with its holder,
        or None once that holder is stored. Old claims (a lost release, a producer that died) cost nothing.
        """
        if not landing:
            return []
        now_ms = self._server_ms()
        left = {i: LAND_WAIT - (now_ms - int(claim.partition(b"|")[0])) / 1000 for i, claim, _ in landing}
        waiting = [entry for entry in landing if left[entry[0]] > 0]
        done: list[tuple[int, bytes, tuple[str, str] | None]] = [e for e in landing if left[e[0]] <= 0]
        started = time.monotonic()
        while waiting:
            time.sleep(LAND_POLL)
            alive = self._alive([who for _, _, who in waiting])
            elapsed = time.monotonic() - started
            still = []
            for entry, live in zip(waiting, alive, strict=True):
                if live:
                    done.append((entry[0], entry[1], None))
                elif elapsed >= left[entry[0]]:
                    done.append(entry)
                else:
                    still.append(entry)
            waiting = still
        return done

    def _server_ms(self) -> int:
        """The Redis server's clock in milliseconds (the clock claims are stamped with)."""
        seconds, micros = self._conn.command("TIME")
        return int(seconds) * 1000 + int(micros) // 1000

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
