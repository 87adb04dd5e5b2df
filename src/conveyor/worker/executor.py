"""Executor: the short path every delivery takes; each feature is a middleware (``middleware.py``).

open (decode, verify, look up) → before_run → around_call(call) → after_success | after_failure → settle
→ after_settle (drawn in docs/worker.md). Bad input is dead-lettered, never raised. Two exceptions leave,
for the pool to give the delivery back uncounted: ``BackendDown`` (the backend failed before the task ran)
and ``GaveUp`` (it ran; its outcome could not be recorded before a stop).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from conveyor.app import App
from conveyor.brokers import Delivery
from conveyor.context import reset_context, set_context
from conveyor.errors import BrokerError, DecodeError, SignatureError
from conveyor.message import Message
from conveyor.middleware import Job, Outcome, Skip
from conveyor.results import error_info
from conveyor.task import BaseTask
from conveyor.worker.eventloops import ThreadLoops
from conveyor.worker.events import Ended
from conveyor.worker.settle import BackendDown, GaveUp, ImmediateSettler, Settler

__all__ = ["BackendDown", "Executor", "GaveUp", "Outcome"]

log = logging.getLogger("conveyor.worker")


class Executor:
    """Runs deliveries for one worker child through the app's hook chain; safe to share between threads.

    ``worker`` is recorded with each result; ``settler`` records results and acks (at once, or pending for
    the pool's batch); ``on_start(delivery, message, task)`` is called after before_run, just before the call.
    """

    def __init__(
        self,
        app: App,
        worker: str,
        settler: Settler | None = None,
        on_start: Callable[[Delivery, Message, BaseTask[Any, Any]], None] | None = None,
    ) -> None:
        self.app = app
        self.chain = app.finalize()
        self.worker = worker
        self.settler = settler if settler is not None else ImmediateSettler(app)
        self._on_start = on_start
        self._started = False
        self._loops = ThreadLoops()

    def start(self) -> None:
        """Run the middleware's ``on_child_start`` hooks, once, in the process that runs the tasks."""
        self._started = True
        self.chain.lifecycle(self.chain.on_child_start, self.app)

    def run(self, delivery: Delivery) -> Outcome:
        """Take one delivery from reserved to settled (acked, retried or dead-lettered)."""
        job = self._open(delivery)
        if isinstance(job, Outcome):
            return job
        try:
            self._before(job)
            value = self._loops.get().run_until_complete(self._acall(job)) if job.task.is_async else self._call(job)
            for hook in self.chain.after_success:
                hook(job, value)
        except Exception as exc:
            return self.chain.settled(job, self._failed(job, exc))
        return self.chain.settled(job, self._succeeded(job))

    async def arun(self, delivery: Delivery) -> Outcome:
        """:meth:`run` on a running event loop: an async task is awaited here, a sync one runs in a thread."""
        job = self._open(delivery)
        if isinstance(job, Outcome):
            return job
        try:
            self._before(job)
            value = await (self._acall(job) if job.task.is_async else asyncio.to_thread(self._call, job))
            for hook in self.chain.after_success:
                hook(job, value)
        except Exception as exc:
            return self.chain.settled(job, self._failed(job, exc))
        return self.chain.settled(job, self._succeeded(job))

    # -- the steps ---------------------------------------------------------------------------

    def _open(self, delivery: Delivery) -> Job | Outcome:
        try:
            message = self.app.codec.decode(delivery.body)
        except (SignatureError, DecodeError) as exc:
            why = "rejected" if isinstance(exc, SignatureError) else "undecodable message"
            return Outcome(delivery.id, "?", self.settler.reject(delivery, f"{why}: {exc}"), 0.0)
        task = self.app.tasks.get(message.task)
        if task is None:
            known = ", ".join(sorted(self.app.tasks)) or "none"
            why = f"task {message.task!r} is not registered on app {self.app.name!r} (known: {known})"
            return Outcome(delivery.id, message.task, self.settler.reject(delivery, why), 0.0)
        return Job(delivery, message, task, self.worker, self.settler)

    def _before(self, job: Job) -> None:
        try:
            for hook in self.chain.before_run:
                hook(job)
        except BrokerError as exc:  # nothing ran: given back uncounted
            raise BackendDown(str(exc)) from exc
        if self._on_start is not None:
            self._on_start(job.delivery, job.message, job.task)

    def _call(self, job: Job) -> Any:
        token = set_context(job.context())
        try:
            with self.chain.call_context(job):
                return job.task.fn(*job.message.args, **job.message.kwargs)
        finally:
            reset_context(token)

    async def _acall(self, job: Job) -> Any:
        token = set_context(job.context())
        try:
            async with self.chain.acall_context(job):
                return await job.task.fn(*job.message.args, **job.message.kwargs)
        finally:
            reset_context(token)

    def _succeeded(self, job: Job) -> Outcome:
        """Hand the result (if any) and the ack to the settler: written now, or pending for the batch."""
        runtime = job.elapsed()
        log.info("task %s[%s] succeeded in %.4fs", job.message.task, job.id, runtime)
        return Outcome(job.id, job.message.task, Ended.SUCCESS, runtime, self.settler.finish(job.delivery, job.result))

    def _failed(self, job: Job, exc: Exception) -> Outcome:
        if isinstance(exc, BackendDown | GaveUp):
            raise exc
        deferred, runtime = False, job.elapsed()
        if isinstance(exc, Skip):
            ended = self.settler.skip(job, exc.note)
        else:
            error = error_info(exc, job.message.attempt)
            ended, deferred = self.settler.failure(job, error, self.chain.verdict(job, exc))
        return Outcome(job.id, job.message.task, ended, runtime, deferred)

    def close(self) -> None:
        """Run the ``on_child_stop`` hooks (after :meth:`start`) and close the event loops async tasks ran on."""
        if self._started:
            self._started = False
            self.chain.lifecycle(self.chain.on_child_stop, self.app)
        self._loops.close()
