"""AsyncResult: the producer's handle on a task it enqueued.

It reads only the result backend: ``get()`` waits on the backend (which wakes as soon as the
result lands), ``state``/``ready()``/``progress`` read the latest record. The type parameter is
the task's return type, so ``add.delay(1, 2).get()`` is an ``int`` to the type checker.

Coroutines use the ``a``-prefixed twins (``await r.aget()``, ``await r.astate()``, ``async for
update in r.aupdates()``), which wait on the event loop instead of blocking it; ``get()`` and
``aget()`` share one path from the stored record to the value or exception.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from conveyor.errors import ResultTimeout, TaskRevoked
from conveyor.failures import rebuild
from conveyor.results import revoked
from conveyor.settings import redact_url
from conveyor.states import ErrorInfo, ResultRecord, State, decode_record, encode_record

if TYPE_CHECKING:
    from conveyor.app import App

R = TypeVar("R")

#: ``get()`` without a timeout waits this long at most, in seconds: no call blocks forever by accident.
DEFAULT_GET_TIMEOUT = 3600.0
#: Seconds between two reads of ``aupdates()`` while the task runs (its final state arrives at once).
UPDATES_EVERY = 0.2


class AsyncResult(Generic[R]):
    """The state and eventual value of one task.

    Args:
        task_id: the id ``delay()``/``apply_async()`` returned.
        app: the app whose result backend holds the result.
    """

    __slots__ = ("_app", "id")

    def __init__(self, task_id: str, app: App) -> None:
        self.id = task_id
        self._app = app

    def __repr__(self) -> str:
        return f"<AsyncResult {self.id} {self.state}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def _record(self) -> ResultRecord | None:
        raw = self._app.backend.get(self.id)
        return None if raw is None else decode_record(raw)

    @property
    def state(self) -> State:
        """The latest state; PENDING when nothing is recorded yet."""
        record = self._record()
        return State.PENDING if record is None else record.state

    def ready(self) -> bool:
        """True once the task finished (SUCCESS, FAILURE or REVOKED)."""
        return self.state.final

    def successful(self) -> bool:
        """True if the task finished with SUCCESS."""
        return self.state is State.SUCCESS

    def failed(self) -> bool:
        """True if the task finished with FAILURE."""
        return self.state is State.FAILURE

    @property
    def result(self) -> Any:
        """The return value once SUCCESS; the exception ``get()`` would raise once FAILURE (the last
        attempt's while in RETRY), as in Celery; else None. Never waits."""
        record = self._record()
        if record is None:
            return None
        if record.state is State.SUCCESS:
            return self._typed(record)
        return None if record.error is None else rebuild(record.error, self.id)

    @property
    def traceback(self) -> str | None:
        """The traceback of the last failed attempt, if any."""
        record = self._record()
        if record is None or record.error is None:
            return None
        return record.error.traceback

    @property
    def errors(self) -> list[ErrorInfo]:
        """Every failed attempt so far, oldest first, each with its traceback."""
        record = self._record()
        return [] if record is None else list(record.errors)

    @property
    def progress(self) -> float | None:
        """The fraction (0-1) the task last reported with ``ctx.progress()``; 1.0 once SUCCESS."""
        record = self._record()
        if record is None:
            return None
        return 1.0 if record.state is State.SUCCESS else record.progress

    @property
    def info(self) -> ResultRecord | None:
        """The whole stored record (state, value, errors, worker, times), or None."""
        return self._record()

    def get(self, timeout: float | None = None, propagate: bool = True) -> R:
        """Wait for the task to finish and return its value, converted into the task's return annotation
        (a ``datetime`` comes back a ``datetime``, not its JSON string; see :mod:`conveyor.typed`).

        Args:
            timeout: seconds to wait at most; None waits up to an hour.
            propagate: raise the task's exception when it failed (else return None).

        Raises:
            TaskFailed: the task failed and ``propagate`` is true. When this process has the task
                exception's type (a builtin, or defined in a module it imported) and it is built
                from its message, the exception is of that type too: ``except ValueError`` matches
                a task's ``ValueError``, and so does ``except TaskFailed``. The worker's traceback
                is in ``.traceback`` and in the notes Python prints. See :mod:`conveyor.failures`.
            ResultTimeout: the task did not finish in time.
            DecodeError: the value does not convert into the task's return annotation (a worker ran other code).
            TaskRevoked: the task was revoked, or expired before a worker ran it (a ResultMissing too).
        """
        limit = DEFAULT_GET_TIMEOUT if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            record = _decode(self._app.backend.wait(self.id, max(0.0, deadline - time.monotonic())))
            if (record is not None and record.state.final) or time.monotonic() >= deadline:
                return self._value_of(record, limit, propagate)

    async def aget(self, timeout: float | None = None, propagate: bool = True) -> R:
        """:meth:`get` for a coroutine: waits on the event loop (woken when the result is written).

        Cancel it (``asyncio.timeout``, a client that went away) and nothing is left behind: no
        waiter, no borrowed connection. The arguments and errors are :meth:`get`'s.
        """
        limit = DEFAULT_GET_TIMEOUT if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while True:
            record = _decode(await self._app.backend.async_wait(self.id, max(0.0, deadline - loop.time())))
            if (record is not None and record.state.final) or loop.time() >= deadline:
                return self._value_of(record, limit, propagate)

    async def astate(self) -> State:
        """:attr:`state` for a coroutine."""
        record = _decode(await self._app.backend.aget(self.id))
        return State.PENDING if record is None else record.state

    async def ainfo(self) -> ResultRecord | None:
        """:attr:`info` for a coroutine: the whole stored record, or None."""
        return _decode(await self._app.backend.aget(self.id))

    async def aupdates(self, every: float = UPDATES_EVERY) -> AsyncIterator[ResultRecord]:
        """Each new state of the task (state, progress and note), until and including its final record.

        The final record arrives the moment it is written. On Redis every write is pushed (each
        progress note wakes the stream); on the other engines progress is read every ``every`` seconds
        and yielded only when something changed. Stop iterating whenever you like (the client went
        away): nothing is left behind. Nothing is yielded while no record exists yet.

        Args:
            every: seconds between two reads while the task runs (on Redis: at most this long between
                two reads when nothing was written).
        """
        last: bytes | None = None
        while True:
            raw = await self._app.backend.async_changed(self.id, last, every)
            if raw is not None and raw != last:
                last = raw
                record = decode_record(raw)
                yield record
                if record.state.final:
                    return

    def _value_of(self, record: ResultRecord | None, limit: float, propagate: bool) -> R:
        """The value (or exception) of the record a wait ended with: one path for get() and aget()."""
        if record is None:  # no worker ever reported on it: say where this process looks (issue 14, friction 2)
            raise ResultTimeout(
                f"task {self.id} did not finish within {limit:g} s (state PENDING: nothing recorded; is a worker "
                f"serving {redact_url(self._app.settings.broker_url)}? `conveyor status` lists live workers)"
            )
        if not record.state.final:
            raise ResultTimeout(f"task {self.id} did not finish within {limit:g} s (state {record.state})")
        return self._final_value(record, propagate)

    def _final_value(self, record: ResultRecord, propagate: bool) -> R:
        if record.state is State.SUCCESS:
            value: R = self._typed(record)
            return value
        if record.state is State.REVOKED:
            raise TaskRevoked(self.id, record.note or "no reason given")
        if not propagate:
            return None  # type: ignore[return-value]
        raise rebuild(record.error or ErrorInfo("UnknownError", "no error recorded"), self.id)

    def _typed(self, record: ResultRecord) -> Any:
        """The stored value, converted into its task's return annotation when this process has the task.

        Raises:
            DecodeError: the value does not convert (the worker ran other code than this process has).
        """
        task = self._app.tasks.get(record.task)
        return record.value if task is None else task.types.result(record.value)

    def revoke(self, terminate: bool = False, reason: str = "revoked") -> bool:
        """Revoke the task: deleted from its queue if it waits there; REVOKED, for good, unless it finished.

        A revocation is final: once REVOKED is recorded, nothing the worker writes replaces it, so
        ``get()`` raises :class:`~conveyor.errors.TaskRevoked` and ``state`` stays REVOKED. A task a
        worker already reserved but has not started (prefetched) is then not run (when ``track_started``
        is on, the default: its STARTED write is refused). A task that already finished (SUCCESS or
        FAILURE) keeps its result: revoking it changes nothing.

        Args:
            terminate: also stop it if it is running: its worker process is replaced within about a
                second. Without it, a running task runs to its end, but its result is discarded
                (the state stays REVOKED) and it is not retried.
            reason: recorded with the REVOKED state.

        Returns:
            True if the task was still waiting in its queue (so it will certainly never run).
        """
        cancelled = bool(self._app.broker.cancel([self.id]))
        record = revoked(reason, terminate)
        self._app.backend.try_set(self.id, State.REVOKED, encode_record(record), self._app.settings.result_ttl)
        return cancelled

    def forget(self) -> None:
        """Delete the stored result."""
        self._app.backend.forget(self.id)


def _decode(raw: bytes | None) -> ResultRecord | None:
    return None if raw is None else decode_record(raw)
