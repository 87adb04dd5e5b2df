"""The executor's path on the asyncio pool's running loop: :meth:`Executor.run`'s steps, awaited.

The steps are the executor's own (admit, then completed or failed); what differs is where each runs.
Steps that read or write the backend hop to the loop's default executor (a thread), except a first
attempt's success into a batching settler, which writes nothing then. The task's call is an asyncio
task of its own (a sync task's runs on ``threads``) under its hard time limit, kept in ``calls`` while
it runs, so that cancelling it there terminates it (``revoke(terminate=True)``, the hard limit).
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import TYPE_CHECKING, Any

from conveyor.brokers import Delivery
from conveyor.middleware import Outcome
from conveyor.worker.timelimits import Calls, Threads, within_hard_limit

if TYPE_CHECKING:
    from conveyor.worker.executor import Executor


async def run_on_loop(
    executor: Executor, delivery: Delivery, calls: Calls | None = None, threads: Threads | None = None
) -> Outcome:
    """Take one delivery from reserved to settled on the running loop (see the module's docstring)."""
    job = await asyncio.to_thread(executor.admit, delivery)
    if isinstance(job, Outcome):
        return job
    executor.started(job)
    loop = asyncio.get_running_loop()
    call: asyncio.Future[Any]
    if job.task.is_async:
        call = loop.create_task(executor.chain.acall(job))
    else:  # a thread of ``threads``, in a copy of this context
        call = loop.run_in_executor(threads, contextvars.copy_context().run, executor.chain.call, job)
    try:
        value = await within_hard_limit(job, call, calls)
    except Exception as exc:
        return await asyncio.to_thread(executor.failed, job, exc)
    if job.message.attempt == 0 and executor.settler.batched:  # nothing to read or write now: no hop
        return executor.completed(job, value)
    return await asyncio.to_thread(executor.completed, job, value)
