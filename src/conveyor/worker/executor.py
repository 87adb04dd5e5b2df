"""Executor: runs one delivery to its end, as a short sequence of named steps.

decode → look up → check expiry → record STARTED → call → record the outcome → ack / retry / bury.

The result is always written before the message is acknowledged, so a crash in between runs
the task again (at-least-once) rather than losing its result. Bad input never raises out of
here: an undecodable message or an unknown task goes to the dead-letter queue with the reason.

The final result and the ack of a task that succeeded, or failed for good, go to the pool's
settler (worker/settle.py): written at once, or kept pending and settled per batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import dataclasses
import logging
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from conveyor.app import App
from conveyor.brokers import Delivery
from conveyor.context import TaskContext, reset_context, set_context
from conveyor.errors import BrokerError, DecodeError, EncodeError, Retry, SignatureError, TimeLimitExceeded
from conveyor.message import Message, decode, encode, encode_value
from conveyor.signing import sign, unframe, verify
from conveyor.states import ErrorInfo, ResultRecord, State, decode_record, encode_record
from conveyor.task import BaseTask
from conveyor.worker.settle import BatchSettler, FinalResult, ImmediateSettler, Settler
from conveyor.worker.timelimits import soft_time_limit

log = logging.getLogger("conveyor.worker")

T = TypeVar("T")


class BackendDown(Exception):
    """The result backend failed *before* the task's function ran: give the delivery back uncounted.

    The caller nacks the delivery (no delivery counted, nothing ran) and stops taking work until
    the backend answers again, instead of leaving the delivery to its lease.
    """


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """How one delivery ended, reported to the supervisor and counted in the worker's stats."""

    id: str
    task: str
    state: str  # SUCCESS | FAILURE | RETRY | REVOKED | DEAD
    runtime: float
    #: True when the result and ack wait in the settler's pending lists (a BatchSettler).
    deferred: bool = False


class _Cancelled(Exception):
    """The task's call was cancelled: past its hard time limit (``hard_limit`` says so) or terminated."""

    def __init__(self, hard_limit: str | None) -> None:
        super().__init__(hard_limit)
        self.hard_limit = hard_limit


class Executor:
    """Runs deliveries for one worker child. Safe to share between the child's threads.

    Args:
        app: the app whose tasks, broker and backend are used.
        worker: this worker's name, recorded with each result.
        settler: records final results and acks (at once, or pending for the pool's next batch).
        on_start: called with (delivery, message, task) just before the task's function runs.
    """

    def __init__(
        self,
        app: App,
        worker: str,
        settler: Settler | None = None,
        on_start: Callable[[Delivery, Message, BaseTask[Any, Any]], None] | None = None,
    ) -> None:
        self.app = app
        self.broker = app.broker
        self.backend = app.backend
        self.worker = worker
        self.ttl = app.settings.result_ttl
        self.track_started = app.settings.track_started
        self.secret = app.settings.secret
        self._on_start = on_start
        self.settler = settler if settler is not None else ImmediateSettler(app)
        self._started_writes = _StartedWrites(self)
        self._loops = threading.local()
        self._all_loops: list[asyncio.AbstractEventLoop] = []

    def run(self, delivery: Delivery) -> Outcome:
        """Take one delivery from reserved to acknowledged (or retried, or dead-lettered)."""
        started = time.perf_counter()
        admitted = self._admit(delivery, started)
        if isinstance(admitted, Outcome):
            return admitted
        message, task = admitted
        return self._execute(delivery, message, task, started)

    async def arun(
        self,
        delivery: Delivery,
        calls: dict[str, asyncio.Future[Any]] | None = None,
        threads: concurrent.futures.Executor | None = None,
    ) -> Outcome:
        """The asyncio pool's :meth:`run`: the same steps, the task's coroutine awaited on the running loop.

        A first delivery of a first attempt is checked on the loop, and its STARTED record written with
        those of every task the loop starts in the same turn (one hop, one round trip). Other blocking
        steps (the checks of a redelivery or retry, the outcome of a failure, a retry or anything an
        :class:`ImmediateSettler` writes) run on the loop's default executor; a first attempt's success
        handed to a :class:`BatchSettler` costs no hop. The call runs as its own
        asyncio task, kept in ``calls`` under the delivery's id while it runs: cancelling it there ends
        the delivery REVOKED and acked (``revoke(terminate=True)``). A hard ``time_limit`` cancels it and
        records FAILURE (no retry). A sync task runs on ``threads`` (the default executor when None).
        """
        started = time.perf_counter()
        admitted = self._admit_first(delivery)
        if admitted is None:  # a redelivery, a retry or a message that will not run: every check, off the loop
            checked = await asyncio.to_thread(self._admit, delivery, started)
            if isinstance(checked, Outcome):
                return checked
            admitted = checked
        elif self.track_started and not admitted[1].options.ignore_result:
            await self._started_writes.write((admitted[0].id, State.STARTED, encode_record(self._started(admitted[0]))))
        message, task = admitted
        if self._on_start is not None:
            self._on_start(delivery, message, task)
        token = set_context(self._context(delivery, message, task))
        try:
            value = await self._acall(delivery.id, message, task, calls, threads)
        except _Cancelled as ended:
            return await asyncio.to_thread(self._cancelled, delivery, message, task, ended, started)
        except Exception as exc:
            return await asyncio.to_thread(self._failed, delivery, message, task, exc, started)
        finally:
            reset_context(token)
        if message.attempt == 0 and isinstance(self.settler, BatchSettler):
            return self._succeeded(delivery, message, task, value, started)
        return await asyncio.to_thread(self._succeeded, delivery, message, task, value, started)

    # -- the steps ---------------------------------------------------------------------------

    def _admit(self, delivery: Delivery, started: float) -> tuple[Message, BaseTask[Any, Any]] | Outcome:
        """Decode, look up, check expiry and revocation, record STARTED: what to run, or how it ended unrun."""
        try:
            message = decode(self._unwrap(delivery.body))
        except SignatureError as exc:
            return self._bury(delivery, f"rejected: {exc}", "?", started)
        except DecodeError as exc:
            return self._bury(delivery, f"undecodable message: {exc}", "?", started)
        task = self.app.tasks.get(message.task)
        if task is None:
            known = ", ".join(sorted(self.app.tasks)) or "none"
            reason = f"task {message.task!r} is not registered on app {self.app.name!r} (known: {known})"
            return self._bury(delivery, reason, message.task, started)
        if message.expires is not None and time.time() > message.expires:
            return self._revoke(delivery, message, "expired before a worker picked it up", started)
        if delivery.deliveries > 1 and _before(self._was_revoked, message.id):  # redelivered after a crash
            return self._revoke(delivery, message, "revoked before it could run again", started)
        self._record_started(message, task)
        return message, task

    def _admit_first(self, delivery: Delivery) -> tuple[Message, BaseTask[Any, Any]] | None:
        """What to run, checked without I/O: a first delivery of a first attempt that decodes, is known, not expired.

        None for anything else: :meth:`_admit` then checks it (and buries or revokes it) off the loop.
        """
        if delivery.deliveries > 1:
            return None
        try:
            message = decode(self._unwrap(delivery.body))
        except (SignatureError, DecodeError):
            return None
        task = self.app.tasks.get(message.task)
        if task is None or message.attempt or (message.expires is not None and time.time() > message.expires):
            return None
        return message, task

    def _record_started(self, message: Message, task: BaseTask[Any, Any]) -> None:
        if task.options.ignore_result or not self.track_started:
            return
        # A retried attempt carries the earlier attempts' errors forward (one extra read, retries only).
        errors = _before(self._read_errors, message.id) if message.attempt else []
        _before(self._write, message, self._started(message, errors))

    def _started(self, message: Message, errors: list[ErrorInfo] | None = None) -> ResultRecord:
        return ResultRecord(
            state=State.STARTED,
            task=message.task,
            attempt=message.attempt,
            worker=self.worker,
            started=time.time(),
            errors=errors or [],
        )

    def _execute(self, delivery: Delivery, message: Message, task: BaseTask[Any, Any], started: float) -> Outcome:
        if self._on_start is not None:
            self._on_start(delivery, message, task)
        ctx = self._context(delivery, message, task)
        token = set_context(ctx)
        try:
            value = self._call(task, message)
        except Exception as exc:
            return self._failed(delivery, message, task, exc, started)
        finally:
            reset_context(token)
        return self._succeeded(delivery, message, task, value, started)

    def _call(self, task: BaseTask[Any, Any], message: Message) -> Any:
        limit = task.options.soft_time_limit
        if task.is_async:
            return self._loop().run_until_complete(self._call_async(task, message, limit))
        with soft_time_limit(limit):
            return task.fn(*message.args, **message.kwargs)

    async def _call_async(self, task: BaseTask[Any, Any], message: Message, limit: float | None) -> Any:
        try:
            return await asyncio.wait_for(task.fn(*message.args, **message.kwargs), limit)
        except TimeoutError:
            if limit is None:
                raise
            raise TimeLimitExceeded(f"task exceeded its soft time limit of {limit:g}s") from None

    async def _acall(
        self,
        delivery_id: str,
        message: Message,
        task: BaseTask[Any, Any],
        calls: dict[str, asyncio.Future[Any]] | None,
        threads: concurrent.futures.Executor | None,
    ) -> Any:
        """Await the task's call (its own asyncio task, or a thread for a sync task) under its hard limit."""
        loop = asyncio.get_running_loop()
        call: asyncio.Future[Any]
        if task.is_async:
            call = loop.create_task(self._call_async(task, message, task.options.soft_time_limit))
        else:  # the thread sees this task's context (current_context()) and its soft limit
            call = loop.run_in_executor(threads, contextvars.copy_context().run, self._call, task, message)
        if calls is not None:
            calls[delivery_id] = call
        try:
            done, _ = await asyncio.wait((call,), timeout=task.options.time_limit)
        finally:
            if calls is not None:
                calls.pop(delivery_id, None)
        if not done:
            call.cancel()  # a sync task's thread runs on until its function returns (docs/worker.md)
            raise _Cancelled(f"task exceeded its hard time limit of {task.options.time_limit:g}s")
        if call.cancelled():
            raise _Cancelled(None)
        return call.result()

    def _cancelled(
        self, delivery: Delivery, message: Message, task: BaseTask[Any, Any], ended: _Cancelled, started: float
    ) -> Outcome:
        """The call was cancelled: past its hard time limit (FAILURE, not retried) or terminated (REVOKED)."""
        runtime = time.perf_counter() - started
        if ended.hard_limit is None:  # revoke(terminate=True): the REVOKED record is the revoker's
            log.warning("task %s[%s] was revoked and terminated after %.4fs", message.task, message.id, runtime)
            deferred = self.settler.finish(delivery, None)
            return Outcome(message.id, message.task, "REVOKED", runtime, deferred=deferred)
        log.error("task %s[%s] failed in %.4fs: %s", message.task, message.id, runtime, ended.hard_limit)
        error = ErrorInfo("TimeLimitExceeded", ended.hard_limit, "", message.attempt)
        record = ResultRecord(
            state=State.FAILURE,
            error=error,
            errors=[*self._previous_errors(message.id), error],
            task=message.task,
            attempt=message.attempt,
            worker=self.worker,
            finished=time.time(),
        )
        return self._finish(delivery, message, record, "FAILURE", runtime)

    def _succeeded(
        self, delivery: Delivery, message: Message, task: BaseTask[Any, Any], value: Any, started: float
    ) -> Outcome:
        runtime = time.perf_counter() - started
        if not task.options.ignore_result:
            try:
                encode_value(value)
            except EncodeError as exc:
                return self._failed(delivery, message, task, exc, started)
            record = ResultRecord(
                state=State.SUCCESS,
                value=value,
                # A retried task keeps its failed attempts with the result (one extra read, retries only).
                errors=self._previous_errors(message.id) if message.attempt else [],
                task=message.task,
                attempt=message.attempt,
                worker=self.worker,
                finished=time.time(),
            )
            return self._finish(delivery, message, record, "SUCCESS", runtime)
        return self._finish(delivery, message, None, "SUCCESS", runtime)

    def _failed(
        self, delivery: Delivery, message: Message, task: BaseTask[Any, Any], exc: Exception, started: float
    ) -> Outcome:
        runtime = time.perf_counter() - started
        error = ErrorInfo(_type_name(exc), _describe(exc), _format_traceback(exc), message.attempt)
        errors = [*self._previous_errors(message.id), error]
        policy = task.retry_policy
        limit = message.max_retries if message.max_retries is not None else policy.max_retries
        if message.attempt < limit and policy.should_retry(exc, message.attempt):
            return self._retry(delivery, message, task, exc, errors, runtime)
        record = ResultRecord(
            state=State.FAILURE,
            error=error,
            errors=errors,
            task=message.task,
            attempt=message.attempt,
            worker=self.worker,
            finished=time.time(),
        )
        log.error("task %s[%s] failed in %.4fs: %s: %s", message.task, message.id, runtime, error.type, error.message)
        if not task.options.dead_letter_on_failure:
            return self._finish(delivery, message, record, "FAILURE", runtime)
        self._store(message, record)
        reason = f"failed after {message.attempt + 1} attempt(s): {error.type}: {error.message}"
        self._durably("dead-letter", lambda: self.broker.dead_letter(delivery, reason))
        return Outcome(message.id, message.task, "FAILURE", runtime)

    def _finish(
        self, delivery: Delivery, message: Message, record: ResultRecord | None, state: str, runtime: float
    ) -> Outcome:
        """Hand the final record (if any) and the ack to the settler: written now, or pending for the batch."""
        if state == "SUCCESS":
            log.info("task %s[%s] succeeded in %.4fs", message.task, message.id, runtime)
        result = None if record is None else (message.id, record.state, encode_record(record))
        deferred = self.settler.finish(delivery, result)
        return Outcome(message.id, message.task, state, runtime, deferred=deferred)

    def _retry(
        self,
        delivery: Delivery,
        message: Message,
        task: BaseTask[Any, Any],
        exc: Exception,
        errors: list[ErrorInfo],
        runtime: float,
    ) -> Outcome:
        delay = task.retry_policy.delay(message.attempt, exc)
        retried = msgspec.structs.replace(message, attempt=message.attempt + 1, eta=time.time() + delay)
        self._store(
            message,
            ResultRecord(
                state=State.RETRY,
                error=errors[-1],
                errors=errors,
                task=message.task,
                attempt=message.attempt,
                worker=self.worker,
                eta=retried.eta,
            ),
        )
        body = self._wrap(encode(retried))
        self._durably("retry", lambda: self.broker.nack(delivery, delay=delay, body=body))
        why = exc.reason if isinstance(exc, Retry) else f"{_type_name(exc)}: {_describe(exc)}"
        log.warning(
            "task %s[%s] will retry in %.2fs (attempt %d of %d): %s",
            message.task,
            message.id,
            delay,
            message.attempt + 1,
            task.options.retries,
            why,
        )
        return Outcome(message.id, message.task, "RETRY", runtime)

    def _revoke(self, delivery: Delivery, message: Message, note: str, started: float) -> Outcome:
        record = ResultRecord(state=State.REVOKED, task=message.task, note=note, finished=time.time())
        _before(self._write, message, record)  # nothing ran: a backend outage gives the delivery back
        self.broker.ack([delivery])
        log.info("task %s[%s] not run: %s", message.task, message.id, note)
        return Outcome(message.id, message.task, "REVOKED", time.perf_counter() - started)

    def _bury(self, delivery: Delivery, reason: str, task: str, started: float) -> Outcome:
        self.broker.dead_letter(delivery, reason)
        log.error("message %s dead-lettered: %s", delivery.id, reason)
        return Outcome(delivery.id, task, "DEAD", time.perf_counter() - started)

    # -- helpers -----------------------------------------------------------------------------

    def _wrap(self, body: bytes) -> bytes:
        return body if self.secret is None else sign(body, self.secret)

    def _unwrap(self, body: bytes) -> bytes:
        return unframe(body) if self.secret is None else verify(body, self.secret)

    def _store(self, message: Message, record: ResultRecord) -> None:
        """Write a record of a task that ran: retried until it lands (see :meth:`Settler.durably`)."""
        self.settler.store((message.id, record.state, encode_record(record)))

    def _write(self, message: Message, record: ResultRecord) -> None:
        self.backend.set(message.id, record.state, encode_record(record), self.ttl)

    def _was_revoked(self, task_id: str) -> bool:
        raw = self.backend.get(task_id)
        return raw is not None and decode_record(raw).state is State.REVOKED

    def _previous_errors(self, task_id: str) -> list[ErrorInfo]:
        """The earlier attempts' errors, read after the task ran: retried until the backend answers."""
        return self._durably("result read", lambda: self._read_errors(task_id))

    def _read_errors(self, task_id: str) -> list[ErrorInfo]:
        raw = self.backend.get(task_id)
        return [] if raw is None else list(decode_record(raw).errors)

    def _durably(self, doing: str, step: Callable[[], T]) -> T:
        return self.settler.durably(doing, step)

    def _context(self, delivery: Delivery, message: Message, task: BaseTask[Any, Any]) -> TaskContext:
        def report(fraction: float, note: str) -> None:  # the task's own call: an outage raises to it
            self._write(
                message,
                ResultRecord(
                    state=State.STARTED,
                    task=message.task,
                    attempt=message.attempt,
                    worker=self.worker,
                    progress=fraction,
                    note=note,
                ),
            )

        limit = message.max_retries if message.max_retries is not None else task.options.retries
        return TaskContext(
            message.id,
            message.task,
            message.attempt,
            limit,
            delivery.deliveries,
            delivery.queue,
            message.headers,
            report,
        )

    def _loop(self) -> asyncio.AbstractEventLoop:
        loop: asyncio.AbstractEventLoop | None = getattr(self._loops, "loop", None)
        if loop is None:
            loop = asyncio.new_event_loop()
            self._loops.loop = loop
            self._all_loops.append(loop)
        return loop

    def close(self) -> None:
        """Close the event loops async tasks ran on."""
        for loop in self._all_loops:
            loop.close()
        self._all_loops.clear()


class _StartedWrites:
    """STARTED records of the tasks a loop starts in one turn, written together (one hop, one round trip)."""

    def __init__(self, executor: Executor) -> None:
        self._executor = executor
        self._waiting: list[tuple[FinalResult, asyncio.Future[None]]] = []

    async def write(self, item: FinalResult) -> None:
        """Write ``item`` with the others of this loop turn; raises BackendDown if the backend failed."""
        loop = asyncio.get_running_loop()
        landed: asyncio.Future[None] = loop.create_future()
        self._waiting.append((item, landed))
        if len(self._waiting) == 1:  # the first of this turn: the write goes once every task started has queued
            loop.call_soon(self._flush, loop)
        await landed

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self._waiting = self._waiting, []
        executor = self._executor
        written = loop.run_in_executor(None, executor.backend.set_many, [item for item, _ in batch], executor.ttl)

        def land(done: asyncio.Future[None]) -> None:
            exc = None if done.cancelled() else done.exception()
            for _, landed in batch:
                if landed.done():
                    continue
                if done.cancelled():  # the loop is closing
                    landed.cancel()
                elif exc is None:
                    landed.set_result(None)
                else:
                    landed.set_exception(BackendDown(str(exc)) if isinstance(exc, BrokerError) else exc)

        written.add_done_callback(land)


def _before(step: Callable[..., T], *args: Any) -> T:
    """Run a backend step that comes before the task's function: a failure raises BackendDown."""
    try:
        return step(*args)
    except BrokerError as exc:
        raise BackendDown(str(exc)) from exc


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    if isinstance(exc, TimeLimitExceeded) or cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _describe(exc: BaseException) -> str:
    """``str(exc)``, or a stand-in when the user's exception cannot be rendered (issue 11, item 11).

    A ``__str__`` that raises must not make the failure itself fail: the task would be redelivered
    until it was dead-lettered as poison, its result left STARTED.
    """
    try:
        return str(exc)
    except Exception as broken:
        return f"<unprintable {type(exc).__qualname__}: __str__ raised {type(broken).__qualname__}>"


def _format_traceback(exc: BaseException) -> str:
    """The traceback of ``exc`` (formatted on any thread); never raises (the standard library guards ``str()``)."""
    try:
        return "".join(traceback.format_exception(exc))
    except Exception as broken:
        return f"<traceback unavailable: formatting it raised {type(broken).__qualname__}>"
