"""Expiry and revocation before a task runs: a task past its ``expires`` time, or revoked while
a dead worker held it, is recorded REVOKED and not run; a redelivered copy of a task whose final
result is already recorded (its worker died after the result, before the ack) is acked unrun.

The :class:`Revocation` middleware owns the ``expires`` task option (the time itself travels in
the message, set by ``delay()``/``apply_async(expires=...)``). A revocation lives in the result
backend (``AsyncResult.revoke`` writes a REVOKED record), so it holds across worker restarts.
Only a *redelivered* message is checked against the backend (one read, after a crash): a first
delivery was enqueued before the revocation, and the broker drops a message revoked while
queued (docs/guarantees.md). Stopping a task that is already running (``terminate=True``) is
the supervisor's job.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, ClassVar

from conveyor.middleware import Job, Middleware, Skip
from conveyor.states import State, decode_record

if TYPE_CHECKING:
    from conveyor.app import App


class Terminated(Exception):
    """A running task's call was cancelled by ``revoke(terminate=True)`` (the asyncio pool cancels its coroutine).

    It ends REVOKED and acked; the REVOKED record is the revoker's. Process and thread pools stop such
    a task by replacing the child that runs it (the supervisor).
    """


class Revocation(Middleware):
    """Skips an expired task, and a redelivered one that was revoked.

    A backend failure while checking raises out of ``before_run``: nothing ran, so the delivery
    goes back uncounted (``BackendDown``).
    """

    options: ClassVar[frozenset[str]] = frozenset({"expires"})

    def __init__(self, app: App) -> None:
        self.app = app

    def before_run(self, job: Job) -> None:
        expires = job.message.expires
        if expires is not None and time.time() > expires:
            raise Skip("expired before a worker picked it up")
        if job.delivery.deliveries > 1:  # redelivered after a crash: one read
            state = self._recorded_state(job.id)
            if state is State.REVOKED:
                raise Skip("revoked before it could run again")
            if state in (State.SUCCESS, State.FAILURE):  # it ran to its end; only the ack was lost
                raise Skip(f"its final result ({state}) is already recorded", record=False)

    def _recorded_state(self, task_id: str) -> State | None:
        raw = self.app.backend.get(task_id)
        return None if raw is None else decode_record(raw).state
