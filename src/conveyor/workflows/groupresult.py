"""GroupResult: the handle on a group's results, in the order of its members.

Its membership is saved in the result backend under the group's id (for ``result_ttl``), so any
process can rebuild it with ``app.group_result(group_id)``, as Celery's ``GroupResult.restore``.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec

from conveyor.errors import ResultTimeout
from conveyor.result import DEFAULT_GET_TIMEOUT, AsyncResult
from conveyor.states import ResultRecord, decode_record

if TYPE_CHECKING:
    from conveyor.app import App

R = TypeVar("R")

#: Where a group's member ids are kept (a value of the result backend).
GROUP_KEY = "group:{}"

#: A member's result ids: a task id, or a nested group's list.
Ids = str | list[Any]


class GroupResult(Generic[R]):
    """The results of a group's members, in order.

    Attributes:
        id: the group's id.
        results: each member's handle (an AsyncResult, or a GroupResult for a nested group).
    """

    __slots__ = ("_app", "id", "results")

    def __init__(self, group_id: str, results: list[Any], app: App) -> None:
        self.id = group_id
        self.results: list[AsyncResult[R]] = results
        self._app = app

    def __repr__(self) -> str:
        return f"<GroupResult {self.id} {self.completed_count()}/{len(self.results)} done>"

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Any:
        return iter(self.results)

    def get(self, timeout: float | None = None, propagate: bool = True) -> list[R]:
        """Wait for every member and return their results in order.

        Args:
            timeout: seconds to wait at most for the whole group; None waits up to an hour.
            propagate: raise the first failed member's exception (in member order); else its place is None.

        Raises:
            ResultTimeout: a member did not finish in time.
            TaskFailed: a member failed (its own exception type, as ``AsyncResult.get``), with ``propagate``.
        """
        limit = DEFAULT_GET_TIMEOUT if timeout is None else timeout
        deadline = time.monotonic() + limit
        records = self._final_records(deadline, limit)
        values: list[Any] = []
        for result in self.results:
            if isinstance(result, GroupResult):
                values.append(result.get(timeout=max(0.0, deadline - time.monotonic()), propagate=propagate))
            else:
                # What get() gives for the record, read here in bulk (AsyncResult's own rule, not a copy of it).
                values.append(result._final_value(records[result.id], propagate))
        return values

    async def aget(self, timeout: float | None = None, propagate: bool = True) -> list[R]:
        """:meth:`get` for a coroutine: the same arguments, result and errors; the event loop runs on meanwhile.

        It waits on the backend's ``async_wait`` (woken when a member's result lands) and reads members in
        bulk off the loop. Cancelling it leaves nothing behind.
        """
        limit = DEFAULT_GET_TIMEOUT if timeout is None else timeout
        deadline = time.monotonic() + limit
        backend = self._app.backend
        pending = self._direct_ids()
        records: dict[str, ResultRecord] = {}
        while pending:
            pending = _sort_final(pending, await asyncio.to_thread(backend.get_many, pending), records)
            if pending:
                await backend.async_wait(pending[0], self._remaining(deadline, limit, pending))
        values: list[Any] = []
        for result in self.results:
            if isinstance(result, GroupResult):
                values.append(await result.aget(timeout=max(0.0, deadline - time.monotonic()), propagate=propagate))
            else:
                values.append(result._final_value(records[result.id], propagate))
        return values

    def _direct_ids(self) -> list[str]:
        return [r.id for r in self.results if not isinstance(r, GroupResult)]

    def _remaining(self, deadline: float, limit: float, pending: list[str]) -> float:
        """Seconds left before ``deadline``.

        Raises:
            ResultTimeout: none are left.
        """
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ResultTimeout(f"group {self.id} did not finish within {limit:g} s ({len(pending)} pending)")
        return remaining

    def _final_records(self, deadline: float, limit: float) -> dict[str, ResultRecord]:
        """Every direct member's final record: read in bulk, waiting on one unfinished member at a time."""
        backend = self._app.backend
        pending = self._direct_ids()
        records: dict[str, ResultRecord] = {}
        while pending:
            pending = _sort_final(pending, backend.get_many(pending), records)
            if pending:  # wait until it lands; then read the rest again in bulk
                backend.wait(pending[0], self._remaining(deadline, limit, pending))
        return records

    def completed_count(self) -> int:
        """How many members succeeded."""
        return sum(1 for r in self.results if r.successful())

    def ready(self) -> bool:
        """True once every member finished (succeeded, failed or was revoked)."""
        return all(r.ready() for r in self.results)

    def successful(self) -> bool:
        """True once every member succeeded."""
        return all(r.successful() for r in self.results)

    def failed(self) -> bool:
        """True if any member failed."""
        return any(r.failed() for r in self.results)

    def revoke(self, terminate: bool = False, reason: str = "revoked") -> None:
        """Revoke every member."""
        for r in self.results:
            r.revoke(terminate=terminate, reason=reason)

    def forget(self) -> None:
        """Delete every member's result and the saved membership."""
        for r in self.results:
            r.forget()
        self._app.backend.delete_value(GROUP_KEY.format(self.id))


def _sort_final(ids: list[str], raws: list[bytes | None], records: dict[str, ResultRecord]) -> list[str]:
    """Put the final ones of these records in ``records``; return the ids still unfinished, in order."""
    unfinished = []
    for task_id, raw in zip(ids, raws, strict=True):
        record = None if raw is None else decode_record(raw)
        if record is not None and record.state.final:
            records[task_id] = record
        else:
            unfinished.append(task_id)
    return unfinished


def save_group(app: App, group_id: str, ids: list[Ids]) -> None:
    """Keep a group's member ids in the result backend for ``result_ttl`` (see :func:`restore_group`)."""
    app.backend.set_value(GROUP_KEY.format(group_id), msgspec.json.encode(ids), app.settings.result_ttl)


def restore_group(app: App, group_id: str) -> GroupResult[Any] | None:
    """The GroupResult saved under ``group_id``, or None when there is none (never saved, or expired)."""
    raw = app.backend.get_value(GROUP_KEY.format(group_id))
    return None if raw is None else _build(app, group_id, msgspec.json.decode(raw))


def _build(app: App, group_id: str, ids: list[Ids]) -> GroupResult[Any]:
    members: list[Any] = [
        AsyncResult(i, app) if isinstance(i, str) else _build(app, f"{group_id}.{n}", i) for n, i in enumerate(ids)
    ]
    return GroupResult(group_id, members, app)
