"""Results: what the result backend records for each task, and the middleware that records it.

The one module that builds a :class:`~conveyor.states.ResultRecord`: every record (STARTED,
progress, SUCCESS, RETRY, FAILURE, REVOKED, the supervisor's hard time limit, a revocation)
comes from a pure builder here, so a record's shape changes in one place.

The :class:`Results` middleware records STARTED before the call (``track_started``), the
task's progress, and the SUCCESS record the settler stores with the ack; it owns the
``ignore_result`` option (no SUCCESS and no STARTED record for that task; failures are still
recorded, so a failed task is never silent). Failure records are written by the executor as
the verdict says (retry, dead letter, fail), from the builders here.
"""

from __future__ import annotations

import time
import traceback
from typing import TYPE_CHECKING, Any, ClassVar

from conveyor.errors import TimeLimitExceeded
from conveyor.message import encode_value
from conveyor.middleware import Job, Middleware, Skip
from conveyor.states import ErrorInfo, ResultRecord, State, decode_record, encode_record

if TYPE_CHECKING:
    from conveyor.app import App
    from conveyor.message import Message
    from conveyor.task import BaseTask

#: A record ready for the backend: (task id, state, encoded record).
Entry = tuple[str, State, bytes]


# -- pure record builders ------------------------------------------------------------------------


def entry(task_id: str, record: ResultRecord) -> Entry:
    """A record encoded for ``ResultBackend.set``/``set_many``."""
    return task_id, record.state, encode_record(record)


def started(job: Job, errors: list[ErrorInfo]) -> ResultRecord:
    """The task is running (``errors``: the earlier attempts', carried forward)."""
    m = job.message
    return ResultRecord(
        state=State.STARTED, task=m.task, attempt=m.attempt, worker=job.worker, started=time.time(), errors=errors
    )


def progress(message: Message, worker: str, fraction: float, note: str) -> ResultRecord:
    """How far the running task is, as it reported with ``ctx.progress()``."""
    return ResultRecord(
        state=State.STARTED, task=message.task, attempt=message.attempt, worker=worker, progress=fraction, note=note
    )


def succeeded(job: Job, value: Any, errors: list[ErrorInfo]) -> ResultRecord:
    """The task returned ``value`` (``errors``: the failed attempts before this one)."""
    m = job.message
    return ResultRecord(
        state=State.SUCCESS, value=value, errors=errors, task=m.task, attempt=m.attempt, worker=job.worker,
        finished=time.time(),
    )  # fmt: skip


def failed(job: Job, errors: list[ErrorInfo]) -> ResultRecord:
    """The task failed for good with ``errors[-1]``."""
    m = job.message
    return ResultRecord(
        state=State.FAILURE, error=errors[-1], errors=errors, task=m.task, attempt=m.attempt, worker=job.worker,
        finished=time.time(),
    )  # fmt: skip


def retrying(job: Job, errors: list[ErrorInfo], eta: float) -> ResultRecord:
    """The attempt failed with ``errors[-1]``; the next one runs no sooner than ``eta``."""
    m = job.message
    return ResultRecord(
        state=State.RETRY, error=errors[-1], errors=errors, task=m.task, attempt=m.attempt, worker=job.worker, eta=eta
    )


def skipped(job: Job, note: str) -> ResultRecord:
    """The task was not run (expired, revoked): ``note`` says why."""
    return ResultRecord(state=State.REVOKED, task=job.message.task, note=note, finished=time.time())


def not_registered(message: Message, reason: str) -> ResultRecord:
    """The worker does not know the message's task: it was dead-lettered unrun, and its producer must hear of it."""
    error = ErrorInfo("conveyor.errors.TaskNotRegistered", reason, "", message.attempt)
    return ResultRecord(
        state=State.FAILURE, error=error, errors=[error], task=message.task, attempt=message.attempt,
        note="dead-lettered: the worker does not know this task", finished=time.time(),
    )  # fmt: skip


def doomed(task: str, error: ErrorInfo) -> ResultRecord:
    """A workflow step that will never run because an earlier one failed (``error``): FAILURE, with that error."""
    return ResultRecord(state=State.FAILURE, task=task, error=error, errors=[error], finished=time.time())


def revoked(reason: str, terminate: bool) -> ResultRecord:
    """A revocation (``AsyncResult.revoke``): the task must not run, and with ``terminate`` must stop if running."""
    return ResultRecord(state=State.REVOKED, note=reason, terminate=terminate, finished=time.time())


def past_hard_limit(task: str, attempt: int, worker: str, limit: float | None = None) -> ResultRecord:
    """The task was stopped at its hard time limit (``limit`` seconds, named when known) by killing its process."""
    text = "task exceeded its hard time limit" + ("" if limit is None else f" of {limit:g}s")
    error = ErrorInfo("TimeLimitExceeded", text, "", attempt)
    return ResultRecord(
        state=State.FAILURE,
        error=error,
        errors=[error],
        task=task,
        attempt=attempt,
        worker=worker,
        finished=time.time(),
    )


def error_info(exc: BaseException, attempt: int) -> ErrorInfo:
    """``exc`` with its traceback (formatted on any thread); never raises, whatever the exception does."""
    return ErrorInfo(type_name(exc), describe(exc), _format_traceback(exc), attempt)


def type_name(exc: BaseException) -> str:
    """``module.QualName`` of an exception type (builtins by their bare name, every time limit as TimeLimitExceeded)."""
    cls = type(exc)
    if isinstance(exc, TimeLimitExceeded):
        return "TimeLimitExceeded"
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def describe(exc: BaseException) -> str:
    """``str(exc)``, or a stand-in when the user's exception cannot be rendered (issue 11, item 11).

    A ``__str__`` that raises must not make the failure itself fail: the task would be redelivered
    until it was dead-lettered as poison, its result left STARTED.
    """
    try:
        return str(exc)
    except Exception as broken:
        return f"<unprintable {type(exc).__qualname__}: __str__ raised {type(broken).__qualname__}>"


def _format_traceback(exc: BaseException) -> str:
    """The traceback of ``exc``; never raises (the standard library already guards ``str()``)."""
    try:
        return "".join(traceback.format_exception(exc))
    except Exception as broken:
        return f"<traceback unavailable: formatting it raised {type(broken).__qualname__}>"


# -- the middleware ------------------------------------------------------------------------------


def read_errors(app: App, task_id: str) -> list[ErrorInfo]:
    """The earlier attempts' errors kept with the task's record (none without a record)."""
    return read_record(app, task_id)[1]


def read_record(app: App, task_id: str) -> tuple[State | None, list[ErrorInfo]]:
    """The task's recorded state (None without a record) and the earlier attempts' errors kept with it."""
    raw = app.backend.get(task_id)
    if raw is None:
        return None, []
    record = decode_record(raw)
    return record.state, list(record.errors)


class Results(Middleware):
    """Records STARTED, progress and SUCCESS. Owns ``ignore_result``.

    Args:
        app: the app whose backend and settings (``track_started``, ``result_ttl``) are used.
    """

    options: ClassVar[frozenset[str]] = frozenset({"ignore_result"})

    def __init__(self, app: App) -> None:
        self.app = app
        self.track_started = app.settings.track_started
        self.ttl = app.settings.result_ttl

    def wants(self, task: BaseTask[Any, Any], hook: str) -> bool:
        # before_run always: it gives the job its progress writer (ctx.progress() writes even with ignore_result).
        return hook != "after_success" or not task.options.ignore_result

    def before_run(self, job: Job) -> None:
        # ctx.progress() is the task's own call: a backend outage raises to the task.
        # Not a closure over the job: a job -> writer -> job cycle would leave every job to the cyclic GC.
        task_id, message, worker = job.id, job.message, job.worker
        job.progress = lambda fraction, note: self._write(task_id, progress(message, worker, fraction, note))
        if self.track_started and not job.task.options.ignore_result:
            # A retried attempt carries the earlier attempts' errors forward (one extra read, retries only).
            errors = read_errors(self.app, job.id) if job.message.attempt else []
            record = started(job, errors)
            # The backend refuses STARTED over REVOKED (backends/base.py): a task revoked after a worker
            # reserved it (prefetched) is not run, at no extra cost: this write happens anyway.
            # Fenced by the lease where the backend sees it (ResultBackend.set_held): a STARTED write that
            # waited in a cut link must not land over the record of the run now holding the message.
            lease = (job.delivery.queue, job.delivery.token)
            landed = self.app.backend.try_set_held(job.id, record.state, encode_record(record), self.ttl, lease)
            if landed is None:
                raise Skip("its lease was lost before it started (redelivered elsewhere)", record=False)
            if not landed:
                raise Skip("revoked before it started", record=False, revoked=True)

    def after_success(self, job: Job, value: Any) -> None:
        if job.task.options.ignore_result:
            return
        encode_value(value)  # an EncodeError fails the task: the value cannot be stored
        job.task.types.check_result(value)  # ... or get() could not convert it into the return annotation
        # A retried task keeps its failed attempts with the result (read after it ran: until the backend answers).
        errors = (
            job.settler.durably("result read", lambda: read_errors(self.app, job.id)) if job.message.attempt else []
        )
        job.result = entry(job.id, succeeded(job, value, errors))

    def _write(self, task_id: str, record: ResultRecord) -> None:
        self.app.backend.set(task_id, record.state, encode_record(record), self.ttl)
