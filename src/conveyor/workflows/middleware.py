"""Workflows: the middleware that moves chains, groups and chords forward in the worker.

- ``before_run``: a task sent by a worker for a workflow (it has a ``parent_id``) whose final result
  is already recorded is a second copy (its parent ran twice, or died between sending and acking):
  it is acked unrun, so a chain step or a chord body never runs twice.
- ``after_success``: start what follows (``links``), and fill the task's place in its chord's gather;
  the member that fills the last place sends the body with every result, in order. This runs before
  the task's result and ack are written (``after_success`` hooks run before the settler), so a worker
  that dies here runs the task again and sends again (harmless: ids are fixed, see ``plan.py``).
- ``after_failure``: a task that failed for good (no retry, no dead letter asked by the middleware
  asked before this one) fails what follows it and its chord, and sends the ``link_error`` callbacks,
  before its ack. ``after_settle`` does the same for a task that was dead-lettered or revoked.

Each step is retried until the backend and broker answer (``settler.durably``): a chord must not be
left waiting because Redis blinked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from conveyor.middleware import Job, Middleware, Outcome, Skip
from conveyor.results import error_info
from conveyor.states import ErrorInfo, State, decode_record
from conveyor.worker.events import Ended
from conveyor.workflows import plan

if TYPE_CHECKING:
    from conveyor.app import App
    from conveyor.middleware import Verdict

#: ``job.state`` key: the failure was already passed on by ``after_failure``.
_PASSED_ON = "workflows.failed"


def _in_workflow(job: Job) -> bool:
    m = job.message
    return bool(m.links or m.chord or m.link_errors)


class Workflows(Middleware):
    """Sends what follows a task of a chain, group or chord, and fails it when the task fails.

    A message outside any workflow (none of these fields set) skips this middleware's hooks altogether.
    """

    message_fields: ClassVar[tuple[str, ...]] = ("parent_id", "links", "chord", "link_errors")

    def __init__(self, app: App) -> None:
        self.app = app

    def before_run(self, job: Job) -> None:
        if job.message.parent_id is None:
            return
        raw = self.app.backend.get(job.id)
        if raw is not None and decode_record(raw).state.final:
            raise Skip("a copy of this workflow task already ran to its end", record=False)

    def after_success(self, job: Job, value: Any) -> None:
        if not _in_workflow(job):
            return
        app, message = self.app, job.message
        job.settler.durably("workflow", lambda: plan.dispatch(app, plan.succeeded(app, message, value)))

    def after_failure(self, job: Job, exc: Exception) -> Verdict | None:
        # Asked only when no middleware asked for a retry or a dead letter: the task fails for good.
        if _in_workflow(job):
            self._pass_on(job, error_info(exc, job.message.attempt))
            job.state[_PASSED_ON] = True
        return None

    def after_settle(self, job: Job, outcome: Outcome) -> None:
        if outcome.ended not in (Ended.FAILURE, Ended.REVOKED) or not _in_workflow(job):
            return
        if job.state.get(_PASSED_ON):
            return
        raw = self.app.backend.get(job.id)
        record = None if raw is None else decode_record(raw)
        error = record.error if record is not None and record.state is State.FAILURE else None
        if error is None and outcome.ended is Ended.REVOKED:
            note = "revoked" if record is None or not record.note else record.note
            error = ErrorInfo("TaskRevoked", f"task {job.message.task}[{job.id}] did not run: {note}", "", 0)
        elif error is None:  # its FAILURE record still waits in the pool's batch
            error = ErrorInfo("TaskFailed", f"task {job.message.task}[{job.id}] failed", "", job.message.attempt)
        self._pass_on(job, error)

    def _pass_on(self, job: Job, error: ErrorInfo) -> None:
        app, message = self.app, job.message

        def record_and_send() -> None:
            records, messages = plan.failed(app, message, error)
            if records:
                app.backend.set_many(records, app.settings.result_ttl)
            plan.dispatch(app, messages)

        job.settler.durably("workflow failure", record_and_send)
