"""In-flight counts of every lease owner, kept in the store (the app's result backend) for ``stats()``.

RabbitMQ answers ``queue.declare`` with the ready count only; which deliveries are unacknowledged,
and where, is known to the process holding them. So each process writes, per lease owner it serves,
``{queue: in-flight count}`` to ``PREFIX:in-flight:OWNER`` (``set_value`` with :data:`TTL`): at once for
a new owner, when the counts change (at most once per :data:`EVERY` seconds) and every ``TTL / 3``
seconds while they do not (an idle worker's polling, or a busy one's heartbeat, gives the occasion).
A registered owner without a record belongs to a dead process, and ``stats()`` forgets it.
``stats()`` adds up the records of the owners in the registry, and its own process's live counts.

What the figure can get wrong, and for how long: it may lag a change by :data:`EVERY` seconds; a
process killed whole keeps its last counts for up to :data:`TTL` seconds (its messages are already
ready again); a worker child the supervisor saw die is cleared at once (``release_owner``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conveyor.backends.base import Store

#: Seconds a record lives without being rewritten.
TTL = 30.0
#: Shortest interval in seconds between two writes of one process's changed counts.
EVERY = 1.0

Counts = dict[str, dict[str, int]]  # owner -> queue -> in flight


class InFlightBoard:
    """Writes this process's per-owner in-flight counts; reads everyone's.

    Args:
        store: where the records live (the app's result backend).
        prefix: the broker's queue prefix.
    """

    def __init__(self, store: Store, prefix: str) -> None:
        self._store = store
        self._prefix = prefix
        self._written: Counts = {}
        self._last = 0.0

    def publish(self, counts: Counts, owners: Collection[str], *, force: bool = False) -> None:
        """Write the records of this process's ``owners`` (and of ``counts``) that changed or are due a refresh.

        Every owner keeps a record while its process lives, empty when it holds nothing, so a missing
        record means a dead process. A new owner is written at once; changes at most every :data:`EVERY` s.
        """
        now = time.monotonic()
        everyone = set(owners) | set(counts) | set(self._written)
        new = everyone - set(self._written)
        if not force and not new and now - self._last < EVERY:
            return
        refresh = force or now - self._last >= TTL / 3
        for owner in everyone:
            current = counts.get(owner, {})
            if refresh or current != self._written.get(owner):
                self._store.set_value(self._key(owner), json.dumps(current).encode(), TTL)
        self._written = {owner: dict(counts.get(owner, {})) for owner in everyone}
        self._last = now

    def clear(self, owner: str) -> None:
        """Write ``owner`` as holding nothing (its process died and RabbitMQ requeued its deliveries)."""
        self._store.set_value(self._key(owner), b"{}", TTL)

    def totals(self, owners: Collection[str], skip: Collection[str]) -> tuple[dict[str, int], list[str]]:
        """In-flight per queue over ``owners`` (except ``skip``), and the owners with no live record."""
        total: dict[str, int] = {}
        stale: list[str] = []
        for owner in owners:
            if owner in skip:
                continue
            raw = self._store.get_value(self._key(owner))
            if raw is None:
                stale.append(owner)
                continue
            add(total, json.loads(raw))
        return total, stale

    def _key(self, owner: str) -> str:
        return f"{self._prefix}:in-flight:{owner}"


def add(total: dict[str, int], counts: Mapping[str, int]) -> None:
    """Add ``counts`` into ``total`` (per queue)."""
    for queue, n in counts.items():
        total[queue] = total.get(queue, 0) + int(n)
