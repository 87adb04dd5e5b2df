"""TaskContext: what a running task can learn and say about itself.

Inside a task, ``current_context()`` returns the context of the task this thread (or asyncio
task) is running: its id, attempt number and deliveries, and ``progress()`` / ``retry()``.
"""

from __future__ import annotations

import contextvars
import dataclasses
from collections.abc import Callable
from typing import NoReturn

from conveyor.errors import ConveyorError, Retry


@dataclasses.dataclass(slots=True)
class TaskContext:
    """The running task's view of itself.

    Attributes:
        id: the task id (the message id, the same as ``AsyncResult.id``).
        task: the task's registered name.
        attempt: retries done before this run; 0 on the first run.
        max_retries: how many retries the task may still be given in total.
        deliveries: how many times the broker handed this message out (> 1 after a worker died).
        queue: the queue it came from.
        headers: user metadata sent with the message.
    """

    id: str
    task: str
    attempt: int
    max_retries: int
    deliveries: int
    queue: str
    headers: dict[str, str]
    _report_progress: Callable[[float, str], None] = dataclasses.field(repr=False, default=lambda f, n: None)

    def progress(self, fraction: float, note: str = "") -> None:
        """Record how far the task is (0.0-1.0), readable as ``AsyncResult.progress``."""
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"progress must be between 0 and 1, got {fraction}")
        self._report_progress(fraction, note)

    def retry(self, countdown: float | None = None, reason: str = "") -> NoReturn:
        """Stop this attempt and run the task again later (counts as one retry).

        A task may be retried at most ``max_retries`` times (``@app.task(retries=N)``, 0 by default,
        as for any failure). Past that the task fails, and the error says so and what to set,
        rather than a bare "retry requested".

        Raises:
            Retry: always; the worker schedules the next attempt, or fails the task when it has
                no retries left.
        """
        if self.attempt < self.max_retries:
            raise Retry(countdown=countdown, reason=reason)
        raise Retry(countdown=countdown, reason=no_retries_left(self.task, self.attempt, self.max_retries, reason))


def no_retries_left(task: str, attempt: int, max_retries: int, reason: str = "") -> str:
    """Why a retry asked for by a task that has no retries left fails it, and what to set."""
    if max_retries == 0:
        why = f"task {task!r} allows 0 retries (the default): declare @app.task(retries=N) to let it retry"
    else:
        why = (
            f"task {task!r} used all of its {max_retries} retries (this was attempt {attempt + 1}): "
            "declare a higher @app.task(retries=N) to allow more"
        )
    return f"retry requested{f' ({reason})' if reason else ''}, but {why}"


_current: contextvars.ContextVar[TaskContext] = contextvars.ContextVar("conveyor_task_context")


def current_context() -> TaskContext:
    """The context of the task being run here.

    Raises:
        ConveyorError: called outside a task run by a worker.
    """
    try:
        return _current.get()
    except LookupError:
        raise ConveyorError("current_context() is only available inside a task run by a worker") from None


def context_or_none() -> TaskContext | None:
    """The context of the task being run here, or None outside a task (read for every log record)."""
    return _current.get(None)


def set_context(ctx: TaskContext) -> contextvars.Token[TaskContext]:
    """Make ``ctx`` current (the worker does this around each task)."""
    return _current.set(ctx)


def reset_context(token: contextvars.Token[TaskContext]) -> None:
    """Undo :func:`set_context`."""
    _current.reset(token)
