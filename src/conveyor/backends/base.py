"""The result backend contract: where task states and return values are kept.

The backend stores one encoded :class:`~conveyor.states.ResultRecord` per task id with a time
to live, and lets a caller wait for a record to reach a final state. Waiting wakes as soon as
the record lands (Redis: blocking pop; SQLite: short adaptive polling; memory: a condition).

It also holds the coordination primitives features need across processes and machines: leader
leases (beat elects one firing scheduler), unique claims (beat's one-enqueue-per-slot, the AMQP
broker's ``key=`` deduplication) and small values (beat's last fired slot per entry). They live
here rather than on the broker because every deployment has a result backend and it is always a
store (SQLite or Redis), while a broker may not be one (RabbitMQ). See ``docs/beat.md``.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

from conveyor.states import State


class ResultBackend(abc.ABC):
    """Base class of every result backend; all methods are safe to call from many threads."""

    schemes: tuple[str, ...] = ()

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

    # -- coordination primitives ------------------------------------------------------------

    @abc.abstractmethod
    def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        """Take the lease ``name`` for ``owner``, or renew it when ``owner`` already holds it, for ``ttl`` seconds.

        Atomic on the server: of any number of owners calling at once, at most one holds the
        lease afterwards. A lease nobody renews lapses ``ttl`` seconds after its last renewal and
        any owner may then take it. Expiry follows the server's clock where there is a server
        (Redis), so owners on machines with skewed clocks agree on it.

        Returns:
            True when ``owner`` holds the lease after the call.
        """

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
        """The value stored under ``key`` by :meth:`set_value`, or None (never set, or expired)."""

    @abc.abstractmethod
    def set_value(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store ``value`` under ``key``, replacing any older one, for ``ttl`` seconds (None: no expiry)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the backend reconnects if used again."""
