"""Every exception conveyor raises, rooted in one tree.

::

    ConveyorError
    ├── ConfigurationError          bad App(...) keyword, CONVEYOR_* variable or task option
    ├── BrokerError
    │   └── BrokerUnavailable       the broker did not answer within the bounded retry
    ├── MessageError
    │   ├── EncodeError             an argument does not serialize (names the argument)
    │   ├── DecodeError             bytes that are not a conveyor message (carries them)
    │   ├── SignatureError          unsigned or mis-signed message for a worker with a secret
    │   ├── MessageTooLarge
    │   └── DuplicateTaskId         a task id that is already queued, scheduled or running
    ├── TaskError
    │   ├── TaskNotRegistered
    │   ├── TimeLimitExceeded       raised inside the task at its soft limit; recorded at the hard one
    │   └── TaskRevoked             AsyncResult.get() of a revoked or expired task (also a ResultMissing)
    └── ResultError
        ├── ResultTimeout           AsyncResult.get() waited longer than its timeout
        ├── ResultMissing           no result stored (expired, ignored, or never run)
        └── TaskFailed              the task raised; carries the remote type, message and traceback

    Retry (Exception)               control flow: raise it inside a task to run it again later

Every class here is raised somewhere (tests/unit/test_errors.py checks it), except the bases
(ConveyorError, BrokerError, MessageError, TaskError, ResultError), which exist to be caught.
"""

from __future__ import annotations


class ConveyorError(Exception):
    """Root of every error conveyor raises."""


class ConfigurationError(ConveyorError):
    """A setting, task option or URL is wrong; raised at decoration or start-up."""


class BrokerError(ConveyorError):
    """The broker failed an operation."""


class BrokerUnavailable(BrokerError):
    """The broker did not answer within the bounded retry."""


class MessageError(ConveyorError):
    """A message could not be built, encoded, decoded or verified."""


class EncodeError(MessageError):
    """A task argument does not serialize.

    Attributes:
        argument: where the bad value sits, e.g. ``args[1]`` or ``kwargs['when']``.
    """

    def __init__(self, message: str, argument: str | None = None) -> None:
        super().__init__(message)
        self.argument = argument


class DecodeError(MessageError):
    """Bytes that are not a valid conveyor message.

    Attributes:
        raw: the undecodable bytes, kept so they can be inspected in the dead-letter queue.
    """

    def __init__(self, message: str, raw: bytes = b"") -> None:
        super().__init__(message)
        self.raw = raw


class SignatureError(MessageError):
    """A worker with a secret received an unsigned or mis-signed message."""


class MessageTooLarge(MessageError):
    """The encoded message exceeds ``max_message_size``."""


class DuplicateTaskId(MessageError):
    """``enqueue`` was given a task id that the broker still holds (queued, scheduled, running or dead).

    Raised by every broker for an explicit ``task_id=`` that is reused while its first message is
    still in the broker; nothing of the batch is stored. (Generated ids never collide.)

    Attributes:
        task_id: the id that is already taken.
    """

    def __init__(self, task_id: str) -> None:
        super().__init__(f"task id {task_id!r} is already in the broker (queued, scheduled, running or dead)")
        self.task_id = task_id


class TaskError(ConveyorError):
    """A task could not be found or was stopped."""


class TaskNotRegistered(TaskError):
    """No task of that name is registered on the app."""


class TimeLimitExceeded(TaskError):
    """The task ran past its time limit."""


class ResultError(ConveyorError):
    """A result could not be obtained."""


class ResultTimeout(ResultError, TimeoutError):
    """``AsyncResult.get()`` waited longer than its timeout."""


class ResultMissing(ResultError):
    """No result is stored for that id (expired, ignored, or never run)."""


class TaskRevoked(TaskError, ResultMissing):
    """``AsyncResult.get()`` of a task that was revoked, or expired before a worker ran it.

    It is also a :class:`ResultMissing` (a revoked task has no result), which ``get()`` raised for
    revoked tasks before this class was.

    Attributes:
        task_id: the revoked task.
        reason: the reason recorded with the revocation.
    """

    def __init__(self, task_id: str, reason: str) -> None:
        super().__init__(f"task {task_id} was revoked: {reason}")
        self.task_id = task_id
        self.reason = reason


class TaskFailed(ResultError):
    """The task raised; ``get(propagate=True)`` raises this in the caller.

    When the caller has the task exception's type and can rebuild it from its message, the
    exception raised is of a subclass of both that type and this one (``except ValueError`` and
    ``except TaskFailed`` both match); see :mod:`conveyor.failures`.

    Attributes:
        type_name: the qualified name of the exception type raised in the worker.
        traceback: the formatted traceback of the failed attempt.
    """

    def __init__(self, type_name: str, message: str, traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.remote_message = message
        self.traceback = traceback


class Retry(Exception):
    """Raise inside a task to run it again later (counts as one retry).

    Args:
        countdown: seconds to wait before the next attempt; None uses the task's backoff.
        reason: a short text recorded with the RETRY state.
    """

    def __init__(self, countdown: float | None = None, reason: str = "") -> None:
        super().__init__(reason or "retry requested")
        self.countdown = countdown
        self.reason = reason
