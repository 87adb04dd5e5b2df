"""Executor: the short path every delivery takes; each feature is a middleware (``middleware.py``).

open → convert the arguments (``conveyor.typed``) → before_run → around_call(call) → after_success | after_failure →
settle → after_settle (docs/worker.md). Arguments that do not convert fail the task and dead-letter the message.
Bad input is dead-lettered. Two exceptions leave, for the pool to give the delivery back uncounted:
``BackendDown`` (the backend failed before the task ran) and ``GaveUp`` (it ran; its outcome was not recorded).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from typing import Any

from conveyor.app import App
from conveyor.brokers import Delivery
from conveyor.errors import BrokerError, DecodeError, SignatureError
from conveyor.logging import quick_log
from conveyor.middleware import Bury, Defer, Job, OnStart, Outcome, Skip, Verdict
from conveyor.results import entry, error_info, not_registered
from conveyor.revocation import Terminated
from conveyor.worker.eventloops import ThreadLoops
from conveyor.worker.events import Ended
from conveyor.worker.settle import BackendDown, GaveUp, ImmediateSettler, Settler
from conveyor.worker.timelimits import Calls, Threads, within_hard_limit

__all__ = ["BackendDown", "Executor", "GaveUp", "Outcome"]

log = logging.getLogger("conveyor.worker")


class Executor:
    """Runs deliveries for one worker child through the app's hook chain; safe to share between threads.

    ``worker`` is recorded with each result; ``settler`` records results and acks (at once, or pending for
    the pool's batch); ``on_start(delivery, message, task)`` is called after before_run, just before the call.
    """

    def __init__(self, app: App, worker: str, settler: Settler | None = None, on_start: OnStart | None = None) -> None:
        self.app = app
        self.chain = app.finalize()
        for task in app.tasks.values():  # read the annotations now, not on each task's first message
            task.types  # noqa: B018
        self.worker = worker
        self.settler = settler if settler is not None else ImmediateSettler(app)
        self._on_start = on_start
        self._started, self._starting = False, threading.Lock()
        self._loops = ThreadLoops()

    def start(self) -> None:
        """Run the ``on_child_start`` hooks once, in the process that runs tasks (else the first delivery does)."""
        with self._starting:
            if not self._started:
                self.chain.lifecycle(self.chain.on_child_start, self.app)
                self._started = True

    def run(self, delivery: Delivery) -> Outcome:
        """Take one delivery from reserved to settled (acked, retried or dead-lettered)."""
        job = self._admit(delivery)
        if isinstance(job, Outcome):
            return job
        if self._on_start is not None:
            self._on_start(job.delivery, job.message, job.task)
        try:
            value = (
                self._loops.get().run_until_complete(self.chain.acall(job))
                if job.task.is_async
                else self.chain.call(job)
            )
        except Exception as exc:
            return self._failed(job, exc)
        return self._completed(job, value)

    async def arun(self, delivery: Delivery, calls: Calls | None = None, threads: Threads | None = None) -> Outcome:
        """:meth:`run` on the asyncio pool's loop; blocking steps hop to its default executor (not a first attempt's
        success into a batching settler). The call is its own asyncio task (a sync task's runs on ``threads``)
        under its hard limit, in ``calls`` while it runs: cancel it there to terminate it."""
        job = await asyncio.to_thread(self._admit, delivery)
        if isinstance(job, Outcome):
            return job
        if self._on_start is not None:
            self._on_start(job.delivery, job.message, job.task)
        loop = asyncio.get_running_loop()
        call: asyncio.Future[Any]
        if job.task.is_async:
            call = loop.create_task(self.chain.acall(job))
        else:  # a thread of ``threads``, in a copy of this context
            call = loop.run_in_executor(threads, contextvars.copy_context().run, self.chain.call, job)
        try:
            value = await within_hard_limit(job, call, calls)
        except Exception as exc:
            return await asyncio.to_thread(self._failed, job, exc)
        if job.message.attempt == 0 and self.settler.batched:  # nothing to read or write now: no hop
            return self._completed(job, value)
        return await asyncio.to_thread(self._completed, job, value)

    def _admit(self, delivery: Delivery) -> Job | Outcome:
        """Decode, look up and run the before_run hooks: the job to call, or how the delivery ended unrun."""
        if not self._started:
            self.start()
        try:
            message = self.app.codec.decode(delivery.body)
        except (SignatureError, DecodeError) as exc:
            why = "rejected" if isinstance(exc, SignatureError) else "undecodable message"
            return Outcome(delivery.id, "?", self.settler.reject(delivery, f"{why}: {exc}"), 0.0)
        task = self.app.tasks.get(message.task)
        if task is None:
            why = unknown_task(self.app, message.task)
            record = entry(message.id, not_registered(message, why))  # its producer sees FAILURE, not PENDING
            return Outcome(delivery.id, message.task, self.settler.reject(delivery, why, record), 0.0)
        job = Job(delivery, message, task, self.worker, self.settler)
        types = task.types
        if types.typed:
            try:
                job.args, job.kwargs = types.arguments(message.args, message.kwargs)
            except DecodeError as exc:  # it would fail so again: FAILURE recorded, the message kept as a dead letter
                return self._failed(job, exc, Bury(str(exc)))
        try:
            for hook in self.chain.before_run:
                hook(job)
        except BrokerError as exc:  # nothing ran: given back uncounted
            raise BackendDown(str(exc)) from exc
        except Exception as exc:
            return self._failed(job, exc)
        return job

    def _completed(self, job: Job, value: Any) -> Outcome:
        """Run the after_success hooks, then hand the result (if any) and the ack to the settler."""
        try:
            for hook in self.chain.after_success:
                hook(job, value)
        except Exception as exc:
            return self._failed(job, exc)
        runtime = job.elapsed()
        quick_log(log, logging.INFO, "task %s[%s] succeeded in %.4fs", job.message.task, job.id, runtime)  # cheap
        deferred = self.settler.finish(job.delivery, job.result)
        return self.chain.settled(job, Outcome(job.id, job.message.task, Ended.SUCCESS, runtime, deferred))

    def _failed(self, job: Job, exc: Exception, verdict: Verdict | None = None) -> Outcome:
        """Settle a job that raised: not run (Skip), terminated, or as ``verdict`` (or the after_failure hooks) say."""
        if isinstance(exc, BackendDown | GaveUp):
            raise exc
        deferred, runtime = False, job.elapsed()
        if isinstance(exc, Skip):
            ended = self.settler.skip(job, exc.note) if exc.record else self.settler.drop(job, exc.note, exc.revoked)
        elif isinstance(exc, Defer):
            ended = self.settler.defer(job, exc)
        elif isinstance(exc, Terminated):
            ended, deferred = self.settler.terminated(job)
        else:
            error = error_info(exc, job.message.attempt)
            ended, deferred = self.settler.failure(job, error, verdict or self.chain.verdict(job, exc))
        return self.chain.settled(job, Outcome(job.id, job.message.task, ended, runtime, deferred))

    def close(self) -> None:
        """Run the ``on_child_stop`` hooks (after :meth:`start`) and close the event loops async tasks ran on."""
        if self._started:
            self._started = False
            self.chain.lifecycle(self.chain.on_child_stop, self.app)
        self._loops.close()


def unknown_task(app: App, name: str) -> str:
    """Why a message for task ``name`` cannot run here, and how to fix it (dead-letter reason and FAILURE error)."""
    module = name.rpartition(".")[0]
    known = ", ".join(sorted(app.tasks)) or "none"
    fix = f"App(..., include=[{module!r}])" if module else "App(..., include=[...])"
    return (
        f"task {name!r} is not registered on app {app.name!r}: the worker never imported the module that declares it; "
        f"add {fix} (or autodiscover=[...]), restart the worker, then `conveyor dlq requeue` it (known: {known})"
    )
