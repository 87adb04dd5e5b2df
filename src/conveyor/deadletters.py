"""Dead letters on failure: a task that fails for good goes to the dead-letter queue.

The :class:`DeadLetters` middleware owns the ``dead_letter_on_failure`` task option. Its
``after_failure`` is asked after Retries (see the order in ``middleware.py``), so a task is
dead-lettered only once it has no retry left; the FAILURE record is written first, then the
message moves to the dead-letter queue with the reason (``conveyor dlq list`` shows both).

Messages that cannot run at all (undecodable, unsigned, an unknown task) are dead-lettered by
the executor before any middleware sees them: there is no job to hand a hook.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from conveyor.middleware import Bury, Job, Middleware
from conveyor.results import describe, type_name

if TYPE_CHECKING:
    from conveyor.task import BaseTask


class DeadLetters(Middleware):
    """Buries the message of a task declared with ``dead_letter_on_failure=True`` when it fails for good."""

    options: ClassVar[frozenset[str]] = frozenset({"dead_letter_on_failure"})

    def wants(self, task: BaseTask[Any, Any], hook: str) -> bool:
        return bool(task.options.dead_letter_on_failure)

    def after_failure(self, job: Job, exc: Exception) -> Bury | None:
        if not job.task.options.dead_letter_on_failure:
            return None
        attempts = job.message.attempt + 1
        return Bury(f"failed after {attempts} attempt(s): {type_name(exc)}: {describe(exc)}")
