"""Idempotency keys and explicit task ids for the AMQP broker, kept in the result backend.

RabbitMQ has no key-value store and no index by message id, so two kinds of *claims* live in the
app's result backend:

- ``enqueue(key=K)`` claims ``PREFIX:key:K`` with the backend's atomic ``claim`` (exactly one of any
  number of concurrent producers wins) and records the winner as holder (``PREFIX:key-holder:K`` =
  ``"ID TIME"``, the claim's Unix time). A loser answers the holder's id and stores nothing.
- An explicit task id (``Envelope.explicit_id``, set for ``task_id=``; a generated id never
  collides, so it costs nothing) claims ``PREFIX:id:ID`` the same way; a loser raises
  :class:`~conveyor.errors.DuplicateTaskId` and nothing of its batch is stored. The message carries
  a header saying its id is claimed, so only those messages release one.

After ``tx.commit`` the producer writes ``PREFIX:landed:ID``: the message is RabbitMQ's. A claim is
released (``unclaim``, only while the holder record still names that message) when the message
leaves the broker: a key on ack, dead letter, cancel and purge; an id on ack, cancel, purge and
dead-letter purge (a dead letter still holds its id).

**Liveness.** A claim is honoured only while its holder may still be in the broker. A holder whose
task has a final result (SUCCESS, FAILURE, REVOKED) finished, and its release was lost (the backend
failed at that moment); a holder that never landed ``land_wait`` seconds after its claim belongs to
a producer that died before ``tx.commit``. Either way the next producer takes the claim over (one
winner, through a second claim named after the stale holder) and stores its message. A release that
fails is retried at the next release of the process. What stays: a key whose holder has no result
record (``ignore_result``) and whose release failed in a process that then died, or an explicit id
whose release failed so, is blocked until the claim expires (``KEY_TTL`` past the eta); a producer
killed after ``tx.commit`` but before its landed mark makes a later producer store a duplicate after
``land_wait`` (never a lost task).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from conveyor.brokers.base import Envelope
from conveyor.errors import DuplicateTaskId
from conveyor.states import decode_record

if TYPE_CHECKING:
    from conveyor.backends.base import ResultBackend

log = logging.getLogger("conveyor.broker")

#: Seconds a claim outlives its message's eta (a bound for a crash that skips the release).
KEY_TTL = 7 * 86_400.0
#: Seconds a losing producer waits for the winner to record its id (between two backend calls).
HOLDER_WAIT = 1.0
#: A claim: (kind "key" or "id", its name, the message id holding it).
Claim = tuple[str, str, str]


def claims_of(key: str | None, message_id: str, explicit_id: bool, *, ids: bool) -> list[Claim]:
    """The claims a message holds: its key, and (``ids``) its id if it was explicit."""
    out: list[Claim] = [] if key is None else [("key", key, message_id)]
    if ids and explicit_id:
        out.append(("id", message_id, message_id))
    return out


class StoreClaims:
    """Claims, answers and releases idempotency keys and explicit ids through a result backend.

    Args:
        backend: the app's result backend.
        prefix: the broker's queue prefix.
        land_wait: seconds after its claim a holder that never landed is taken for dead.
    """

    def __init__(self, backend: ResultBackend, prefix: str, land_wait: float) -> None:
        self._backend = backend
        self._prefix = prefix
        self.land_wait = land_wait
        self._unreleased: list[Claim] = []
        self._lock = threading.Lock()  # slot threads of one process release concurrently

    def claim(self, envelopes: Sequence[Envelope]) -> tuple[list[str], list[Envelope], list[Claim]]:
        """Claim the keys and explicit ids of ``envelopes``.

        Returns:
            The id to answer for each envelope, the envelopes to store, and the claims this call
            took (to :meth:`landed` after the commit, or :meth:`undo` if storing fails).

        Raises:
            DuplicateTaskId: an explicit id is still held; the claims of this call are undone.
        """
        backend = self._backend
        answer: list[str] = []
        fresh: list[Envelope] = []
        won: list[Claim] = []
        keys: dict[str, str] = {}  # key -> id holding it in this batch
        try:
            for env in envelopes:
                holder = self._key_holder(backend, env, keys, won)
                answer.append(holder or env.id)
                if holder is not None:  # its key folds it into a pending message: nothing stored, no id check
                    continue
                if env.explicit_id:
                    if ("id", env.id, env.id) in won or not self._take(backend, "id", env.id, env)[0]:
                        raise DuplicateTaskId(env.id)
                    won.append(("id", env.id, env.id))
                fresh.append(env)
        except BaseException:
            self.undo(won)
            raise
        return answer, fresh, won

    def landed(self, claimed: Sequence[Claim], envelopes: Sequence[Envelope]) -> None:
        """Mark the claimed messages as stored (after ``tx.commit``); best effort, see the module docstring."""
        if not claimed:
            return
        now = time.time()
        stored = {e.id: e for e in envelopes}
        try:
            backend = self._backend
            for message_id in dict.fromkeys(c[2] for c in claimed if c[2] in stored):
                backend.set_value(self._landed(message_id), b"1", _ttl(stored[message_id], now))
        except Exception as exc:  # the messages are stored: a failure here must not fail the enqueue
            log.warning("could not mark claimed messages as stored (a later producer may duplicate them): %s", exc)

    def release(self, claims: Sequence[Claim]) -> None:
        """Free the claims of messages that left the broker; a failure is retried at the next release."""
        with self._lock:
            todo, self._unreleased = [*self._unreleased, *claims], []
        done = 0
        try:
            if todo:
                backend = self._backend
                for kind, name, message_id in todo:
                    if _holder_id(backend.get_value(self._holder(kind, name))) == message_id:
                        backend.unclaim(self._claim(kind, name))
                    done += 1
        except Exception as exc:  # the message is gone already: keep the release for later
            log.warning("could not release %d idempotency claim(s), will retry: %s", len(todo) - done, exc)
            with self._lock:
                self._unreleased = [*todo[done:], *self._unreleased]

    def undo(self, claimed: Sequence[Claim]) -> None:
        """Free claims taken by an enqueue whose messages were not stored."""
        self.release(claimed)

    # -- claiming ----------------------------------------------------------------------------

    def _key_holder(self, backend: ResultBackend, env: Envelope, batch: dict[str, str], won: list[Claim]) -> str | None:
        """The id to answer instead of storing ``env`` (its key is held), or None to store it."""
        if env.key is None:
            return None
        if env.key in batch:  # a key twice in one batch: the first envelope holds it
            return batch[env.key]
        won_it, holder = self._take(backend, "key", env.key, env)
        if won_it:
            batch[env.key] = env.id
            won.append(("key", env.key, env.id))
        return holder

    def _take(self, backend: ResultBackend, kind: str, name: str, env: Envelope) -> tuple[bool, str | None]:
        """Claim ``kind:name`` for ``env``: a free claim, or one whose holder is gone (taken over).

        Returns:
            Whether this call won it, and otherwise the id holding it (None if no holder showed up:
            the caller stores its message anyway, a duplicate at worst).
        """
        now = time.time()
        me = f"{env.id} {now!r}".encode()
        if backend.claim(self._claim(kind, name), _ttl(env, now)):
            backend.set_value(self._holder(kind, name), me, _ttl(env, now))
            return True, None
        raw = self._holder_record(backend, kind, name, None)
        if raw is not None and self._alive(backend, kind, raw):
            return False, _holder_id(raw)
        # The holder is gone (or never wrote itself): one producer takes over, through a claim named
        # after the stale holder; the others wait for the winner's holder record.
        stale = b"-" if raw is None else raw
        if backend.claim(f"{self._claim(kind, name)}:after:{stale.decode()}", _ttl(env, now)):
            backend.set_value(self._holder(kind, name), me, _ttl(env, now))
            return True, None
        return False, _holder_id(self._holder_record(backend, kind, name, raw))

    def _alive(self, backend: ResultBackend, kind: str, raw: bytes) -> bool:
        """Whether the holder ``raw`` (``"ID TIME"``) may still be in the broker (see the module docstring)."""
        holder, _, claimed_at = raw.decode().partition(" ")
        if kind == "key":
            record = backend.get(holder)
            if record is not None and decode_record(record).state.final:
                return False
        if backend.get_value(self._landed(holder)) is not None or not claimed_at:
            return True  # stored (or written before holders carried their time: trusted)
        return time.time() - float(claimed_at) < self.land_wait

    def _holder_record(self, backend: ResultBackend, kind: str, name: str, stale: bytes | None) -> bytes | None:
        """The holder record of a claim other than ``stale``, waiting briefly for a winner to write it (None: none)."""
        deadline = time.monotonic() + HOLDER_WAIT
        while True:
            raw = backend.get_value(self._holder(kind, name))
            if (raw is not None and raw != stale) or time.monotonic() >= deadline:
                return None if raw == stale else raw
            time.sleep(0.01)

    # -- names -------------------------------------------------------------------------------

    def _claim(self, kind: str, name: str) -> str:
        return f"{self._prefix}:{kind}:{name}"

    def _holder(self, kind: str, name: str) -> str:
        return f"{self._prefix}:{kind}-holder:{name}"

    def _landed(self, message_id: str) -> str:
        return f"{self._prefix}:landed:{message_id}"


def _holder_id(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode().partition(" ")[0]


def _ttl(env: Envelope, now: float) -> float:
    return KEY_TTL + max(0.0, (env.eta or now) - now)
