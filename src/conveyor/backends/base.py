"""The result backend contract: where task states and return values are kept.

The backend stores one encoded :class:`~conveyor.states.ResultRecord` per task id with a time
to live, and lets a caller wait for a record to reach a final state. Waiting wakes as soon as
the record lands (Redis: blocking pop; SQLite: short adaptive polling; memory: a condition).
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

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the backend reconnects if used again."""
