"""Idempotency keys for the AMQP broker, kept in the result backend (RabbitMQ has no key-value store).

``enqueue(key=K)`` claims ``PREFIX:key:K`` with the backend's atomic ``claim`` (exactly one of any
number of concurrent producers wins) and records the winner's message id beside it
(``PREFIX:key-holder:K``, ``set_value``). A loser answers the recorded id and stores nothing. The
claim is released (``unclaim``) when the message is acknowledged, dead-lettered, cancelled or purged,
and only while the holder record still names that message, so a late release never frees a key a
newer message holds.

Trade-offs, written down in docs/amqp.md: a claim lives ``KEY_TTL`` seconds past the message's eta,
so a message pending longer than that no longer blocks its key; and a producer that dies between
claim and holder record leaves a claim with no holder, in which case later producers store their
message anyway (a possible duplicate, never a lost task) until the claim expires.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from conveyor.brokers.base import Envelope

if TYPE_CHECKING:
    from conveyor.backends.base import ResultBackend

#: Seconds a key claim outlives its message's eta (a bound for a crash that skips the release).
KEY_TTL = 7 * 86_400.0
#: Seconds a losing producer waits for the winner to record its id (between two backend calls).
HOLDER_WAIT = 1.0


class KeyClaims:
    """Claims, answers and releases idempotency keys through a result backend."""

    def __init__(self, backend: Callable[[], ResultBackend], prefix: str) -> None:
        self._backend = backend
        self._prefix = prefix

    def claim(self, envelopes: Sequence[Envelope]) -> tuple[list[str], list[Envelope], list[Envelope]]:
        """Claim the keys of ``envelopes``.

        Returns:
            The id to answer for each envelope, the envelopes to store, and those whose key this call
            claimed (to :meth:`undo` if storing fails).
        """
        backend = self._backend()
        answer: list[str] = []
        fresh: list[Envelope] = []
        won: dict[str, Envelope] = {}
        now = time.time()
        for env in envelopes:
            if env.key is None:
                answer.append(env.id)
                fresh.append(env)
            elif env.key in won:  # a key twice in one batch: the first envelope holds it
                answer.append(won[env.key].id)
            elif backend.claim(self._claim(env.key), _ttl(env, now)):
                backend.set_value(self._holder(env.key), env.id.encode(), _ttl(env, now))
                won[env.key] = env
                answer.append(env.id)
                fresh.append(env)
            else:
                holder = self._wait_for_holder(backend, env.key)
                answer.append(env.id if holder is None else holder)
                if holder is None:
                    fresh.append(env)
        return answer, fresh, list(won.values())

    def release(self, held: Sequence[tuple[str, str]]) -> None:
        """Free the keys of finished messages, given as (key, message id) pairs."""
        if not held:
            return
        backend = self._backend()
        for key, message_id in held:
            if backend.get_value(self._holder(key)) == message_id.encode():
                backend.unclaim(self._claim(key))

    def undo(self, claimed: Sequence[Envelope]) -> None:
        """Free keys claimed by an enqueue whose messages were not stored."""
        self.release([(e.key, e.id) for e in claimed if e.key is not None])

    def _wait_for_holder(self, backend: ResultBackend, key: str) -> str | None:
        deadline = time.monotonic() + HOLDER_WAIT
        while True:
            raw = backend.get_value(self._holder(key))
            if raw is not None or time.monotonic() >= deadline:
                return None if raw is None else raw.decode()
            time.sleep(0.01)

    def _claim(self, key: str) -> str:
        return f"{self._prefix}:key:{key}"

    def _holder(self, key: str) -> str:
        return f"{self._prefix}:key-holder:{key}"


def _ttl(env: Envelope, now: float) -> float:
    return KEY_TTL + max(0.0, (env.eta or now) - now)
