"""The result backend contract, and the Store contract it extends.

:class:`Store` holds the coordination primitives features need across processes and machines:
leader leases (beat elects one firing scheduler), unique claims (beat's one-enqueue-per-slot, the
AMQP broker's ``key=`` deduplication) and small values with a time to live (beat's last fired slot
per entry, the AMQP broker's worker registry and in-flight counts).

:class:`ResultBackend` is a Store that also keeps one encoded :class:`~conveyor.states.ResultRecord`
per task id with a time to live, and lets a caller wait for a record to reach a final state. Waiting
wakes as soon as the record lands (Redis: blocking pop; SQLite: short adaptive polling; memory: a
condition).

The primitives live on the backend rather than on the broker because every deployment has a result
backend and it is always a store (SQLite or Redis), while a broker may not be one (RabbitMQ). A broker
that needs a store is handed the app's backend when it is built (``Broker.from_url(..., store=)``).
See ``docs/beat.md`` and ``docs/amqp.md``.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Self

from conveyor.states import State

#: Entries (batches of events) an event log keeps at most; older ones are trimmed as new ones arrive.
MAX_BATCHES = 10_000


class Store(abc.ABC):
    """Leases, claims and values shared by every process of a deployment; all methods are thread-safe.

    It also keeps the event log (``conveyor/eventlog.py``): batches of encoded events, bounded to
    MAX_BATCHES entries and an age. A backend without one keeps the defaults, which raise
    NotImplementedError: workers then log once that events are off.

    Each method is one atomic step on the server. Expiry follows the server's clock where there is a
    server (Redis), so processes on machines with skewed clocks agree on it.
    """

    @abc.abstractmethod
    def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        """Take the lease ``name`` for ``owner``, or renew it when ``owner`` already holds it, for ``ttl`` seconds.

        Atomic on the server: of any number of owners calling at once, at most one holds the
        lease afterwards. A lease nobody renews lapses ``ttl`` seconds after its last renewal and
        any owner may then take it.

        Returns:
            True when ``owner`` holds the lease after the call.
        """

    def lease_holder(self, name: str) -> str | None:
        """Who holds the lease ``name`` now (None: nobody, or it lapsed); for display (the dashboard's beat leader).

        A backend that cannot tell keeps this default, None.
        """
        return None

    @abc.abstractmethod
    def release_lease(self, name: str, owner: str) -> None:
        """Give the lease ``name`` up, only if ``owner`` holds it (a lease taken over since is left alone)."""

    @abc.abstractmethod
    def claim(self, key: str, ttl: float) -> bool:
        """Create ``key`` if it does not exist, expiring after ``ttl`` seconds; atomic on the server.

        Returns:
            True when this call created the key; False when it already exists (and has not expired).
            Of any number of concurrent calls on one key, exactly one returns True.
        """

    @abc.abstractmethod
    def unclaim(self, key: str) -> None:
        """Delete the claim ``key`` (nothing happens when it does not exist)."""

    @abc.abstractmethod
    def get_value(self, key: str) -> bytes | None:
        """The value stored under ``key`` by :meth:`set_value`, or None (never set, expired or deleted)."""

    @abc.abstractmethod
    def set_value(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store ``value`` under ``key``, replacing any older one, for ``ttl`` seconds (None: no expiry)."""

    @abc.abstractmethod
    def delete_value(self, key: str) -> None:
        """Delete the value under ``key`` (nothing happens when there is none)."""

    def append_events(self, batch: bytes, ttl: float) -> None:
        """Append one batch to the event log, then trim it to MAX_BATCHES entries and to ``ttl`` seconds of age."""
        raise NotImplementedError(f"{type(self).__name__} keeps no event log")

    def read_events(self, after: str | None, limit: int) -> list[tuple[str, bytes]]:
        """Up to ``limit`` event-log entries after the cursor ``after`` (None: from the oldest), oldest first.

        Returns:
            ``(cursor, batch)`` pairs; pass the last cursor back to read on.
        """
        raise NotImplementedError(f"{type(self).__name__} keeps no event log")

    def newest_events(self, limit: int) -> list[tuple[str, bytes]]:
        """The newest ``limit`` event-log entries, oldest first (what a dashboard shows; engines read from the end)."""
        window: list[tuple[str, bytes]] = []
        after: str | None = None
        while page := self.read_events(after, limit):
            window = (window + page)[-limit:]
            after = page[-1][0]
        return window

    def last_event_cursor(self) -> str | None:
        """The cursor of the newest event-log entry (read after it to see only what comes next); None when empty."""
        raise NotImplementedError(f"{type(self).__name__} keeps no event log")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the store reconnects if used again."""


class ResultBackend(Store):
    """Base class of every result backend: task records, plus the :class:`Store` primitives; thread-safe."""

    def __init__(self, url: str) -> None:
        """Every backend is built from its URL alone; each engine reads what it needs (``memory://`` nothing)."""

    @classmethod
    def from_url(cls, url: str) -> Self:
        """Build the backend ``url`` names (the registry ``conveyor.backends.from_url`` picks the class by scheme).

        Raises:
            ConfigurationError: a URL the engine cannot use.
        """
        return cls(url)

    @abc.abstractmethod
    def set(self, task_id: str, state: State, record: bytes, ttl: float) -> None:
        """Store ``record`` (an encoded ResultRecord in ``state``) for ``ttl`` seconds, replacing any older one.

        A final state wakes every :meth:`wait` on that id.
        """

    def set_many(self, items: Sequence[tuple[str, State, bytes]], ttl: float) -> None:
        """Store several records in one round trip where the engine allows it."""
        for task_id, state, record in items:
            self.set(task_id, state, record, ttl)

    @abc.abstractmethod
    def get(self, task_id: str) -> bytes | None:
        """The stored record, or None if there is none (never stored, expired or forgotten)."""

    @abc.abstractmethod
    def wait(self, task_id: str, timeout: float) -> bytes | None:
        """Block until the record is in a final state, up to ``timeout`` seconds.

        Returns:
            The final record, or the latest non-final one (or None) when the timeout passed.
        """

    @abc.abstractmethod
    def forget(self, task_id: str) -> None:
        """Delete the record."""
