"""Executor: the short path every delivery takes; each feature is a middleware (``middleware.py``).

open → convert the arguments (``typed.py``) → before_run → around_call(call) → after_success | after_failure →
settle → after_settle (docs/worker.md). Bad input (arguments that do not convert too) is dead-lettered. Two
exceptions leave, for the pool to give the delivery back uncounted: ``BackendDown`` (the backend failed before
the task ran) and ``GaveUp`` (it ran; its outcome was not recorded).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from conveyor.app import App
from conveyor.brokers import Delivery
from conveyor.discovery import unknown_task
from conveyor.errors import BrokerError, DecodeError, SignatureError
from conveyor.logging import quick_log
from conveyor.middleware import Bury, Defer, Job, OnStart, Outcome, Skip, Verdict
from conveyor.results import error_info
from conveyor.revocation import Terminated
from conveyor.worker.arun import run_on_loop
from conveyor.worker.eventloops import ThreadLoops
from conveyor.worker.events import Ended
from conveyor.worker.settle import BackendDown, GaveUp, ImmediateSettler, Settler
from conveyor.worker.timelimits import Calls, Threads

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
        job = self.admit(delivery)
        if isinstance(job, Outcome):
            return job
        self.started(job)
        try:
            value = (
                self._loops.get().run_until_complete(self.chain.acall(job))
                if job.task.is_async
                else self.chain.call(job)
            )
        except Exception as exc:
            return self.failed(job, exc)
        return self.completed(job, value)

    async def arun(self, delivery: Delivery, calls: Calls | None = None, threads: Threads | None = None) -> Outcome:
        """:meth:`run` on the asyncio pool's running loop: see :func:`conveyor.worker.arun.run_on_loop`."""
        return await run_on_loop(self, delivery, calls, threads)

    def started(self, job: Job) -> None:
        """Tell the pool (``on_start``) that the job's call begins now: from here a crash counts a delivery."""
        if self._on_start is not None:
            self._on_start(job.delivery, job.message, job.task)

    def admit(self, delivery: Delivery) -> Job | Outcome:
        """Decode, look up and run the before_run hooks: the job to call, or how the delivery ended unrun."""
        if not self._started:
            self.start()
        try:
            message = self.app.codec.decode(delivery.body)
        except (SignatureError, DecodeError) as exc:
            why = "rejected" if isinstance(exc, SignatureError) else "undecodable message"
            return Outcome(delivery.id, "?", self.settler.reject(delivery, f"{why}: {exc}"), 0.0)
        task = self.app.tasks.get(message.task)
        if task is None:  # dead-lettered, and its producer sees FAILURE, not PENDING (discovery.py says why)
            why, record = unknown_task(self.app, message)
            return Outcome(delivery.id, message.task, self.settler.reject(delivery, why, record), 0.0)
        job = Job(delivery, message, task, self.worker, self.settler)
        plan = job.plan = self.chain.plan(task, message)  # only the hooks this task's message needs
        types = task.types
        if types.typed:
            try:
                job.args, job.kwargs = types.arguments(message.args, message.kwargs)
            except DecodeError as exc:  # it would fail so again: FAILURE recorded, the message kept as a dead letter
                return self.failed(job, exc, Bury(str(exc)))
        try:
            for hook in plan.before_run:
                hook(job)
        except BrokerError as exc:  # nothing ran: given back uncounted
            raise BackendDown(str(exc)) from exc
        except Exception as exc:
            return self.failed(job, exc)
        return job

    def completed(self, job: Job, value: Any) -> Outcome:
        """Run the after_success hooks, then hand the result (if any) and the ack to the settler."""
        try:
            for hook in (job.plan or self.chain.plan(job.task, job.message)).after_success:
                hook(job, value)
        except Exception as exc:
            return self.failed(job, exc)
        runtime = job.elapsed()
        quick_log(log, logging.INFO, "task %s[%s] succeeded in %.4fs", job.message.task, job.id, runtime)  # cheap
        deferred = self.settler.finish(job.delivery, job.result)
        return self.chain.settled(job, Outcome(job.id, job.message.task, Ended.SUCCESS, runtime, deferred))

    def failed(self, job: Job, exc: Exception, verdict: Verdict | None = None) -> Outcome:
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
