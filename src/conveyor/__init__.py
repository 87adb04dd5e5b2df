"""conveyor: a distributed task queue that never loses a task and needs no server to start.

::

    from conveyor import App

    app = App("shop")                       # embedded default: sqlite:///conveyor.db

    @app.task(retries=3)
    def add(a: int, b: int) -> int:
        return a + b

    add.delay(1, 2).get(timeout=5)          # run a worker: conveyor worker shop:app
"""

from conveyor.app import App
from conveyor.context import TaskContext, current_context
from conveyor.errors import (
    BrokerError,
    BrokerUnavailable,
    ConfigurationError,
    ConveyorError,
    DecodeError,
    DuplicateTaskId,
    EncodeError,
    MessageError,
    MessageTooLarge,
    ResultError,
    ResultMissing,
    ResultTimeout,
    Retry,
    SignatureError,
    TaskError,
    TaskFailed,
    TaskNotRegistered,
    TaskRevoked,
    TimeLimitExceeded,
)
from conveyor.logging import get_task_logger
from conveyor.middleware import Bury, Fail, Job, Middleware, Outcome, Requeue, Skip, Verdict
from conveyor.result import AsyncResult
from conveyor.scheduler import Cron, Interval
from conveyor.settings import Settings
from conveyor.states import State
from conveyor.task import AsyncTask, Task, TaskOptions
from conveyor.workflows import Chain, Chord, Group, GroupResult, Signature, chain, chord, group, signature

__version__ = "0.1.0"

__all__ = [
    # The application and its tasks
    "App",
    "AsyncTask",
    "Task",
    "TaskOptions",
    "Settings",
    # Periodic tasks and task calls written down
    "Cron",
    "Interval",
    "Signature",
    # Workflows (see docs/workflows.md)
    "chain",
    "group",
    "chord",
    "signature",
    "Chain",
    "Group",
    "Chord",
    "GroupResult",
    # Results
    "AsyncResult",
    "State",
    # Middleware: plug into the worker's path of each task (see docs/worker.md)
    "Middleware",
    "Job",
    "Skip",
    "Verdict",
    "Requeue",
    "Bury",
    "Fail",
    "Outcome",
    # Inside a task
    "TaskContext",
    "current_context",
    "get_task_logger",
    "Retry",
    # Errors
    "BrokerError",
    "BrokerUnavailable",
    "ConfigurationError",
    "ConveyorError",
    "DecodeError",
    "EncodeError",
    "MessageError",
    "MessageTooLarge",
    "DuplicateTaskId",
    "ResultError",
    "ResultMissing",
    "ResultTimeout",
    "SignatureError",
    "TaskError",
    "TaskFailed",
    "TaskNotRegistered",
    "TaskRevoked",
    "TimeLimitExceeded",
]
