"""Time limits: the :class:`TimeLimits` middleware raises TimeLimitExceeded inside a task past its
``soft_time_limit``; it owns ``soft_time_limit`` and ``time_limit``.

The hard ``time_limit`` is the supervisor's matter: a task cannot be trusted to stop itself, so
the child reports the task's start with its deadline and the supervisor replaces the process
(``supervisor.py``). The soft limit is raised in the task itself:

- an async task: ``asyncio.timeout`` on the loop running it cancels the awaited coroutine;
- in a process-pool child the task runs in the main thread, so a SIGALRM timer interrupts it even
in a blocking call such as ``time.sleep``. In a thread-pool slot the exception is set
asynchronously on the thread (CPython's ``PyThreadState_SetAsyncExc``), which takes effect at the
next Python bytecode: a thread blocked in C code sees it when the call returns. Hard limits are
the supervisor's job (it replaces the process).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import signal
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from types import FrameType
from typing import Any, ClassVar

from conveyor.errors import TimeLimitExceeded
from conveyor.middleware import Fail, Job, Middleware
from conveyor.revocation import Terminated
from conveyor.task import BaseTask

#: The running calls of an asyncio pool by delivery id: cancelling one terminates that task.
Calls = dict[str, "asyncio.Future[Any]"]
#: Where the asyncio pool runs a sync task (the loop's default executor when None).
Threads = concurrent.futures.Executor

_NO_LIMIT = contextlib.nullcontext()
_FAIL = Fail()


class HardTimeLimit(TimeLimitExceeded):
    """The hard limit, enforced in the asyncio pool's own process by cancelling the call; never retried."""


class TimeLimits(Middleware):
    """Applies a task's soft time limit around its call; a hard limit is never retried.

    The hard limit itself is the supervisor's (it replaces the process), or, on the asyncio pool,
    :func:`within_hard_limit`'s.
    """

    options: ClassVar[frozenset[str]] = frozenset({"time_limit", "soft_time_limit"})

    def wraps(self, task: BaseTask[Any, Any]) -> bool:
        return task.options.soft_time_limit is not None

    def wants(self, task: BaseTask[Any, Any], hook: str) -> bool:
        # after_failure: only a task with a hard limit can raise HardTimeLimit (around_call: see wraps).
        return hook != "after_failure" or task.options.time_limit is not None

    def after_failure(self, job: Job, exc: Exception) -> Fail | None:
        return _FAIL if isinstance(exc, HardTimeLimit) else None

    def around_call(self, job: Job) -> AbstractContextManager[None]:
        limit = job.task.options.soft_time_limit
        return _NO_LIMIT if limit is None else soft_time_limit(limit)

    def around_acall(self, job: Job) -> AbstractAsyncContextManager[None]:
        limit = job.task.options.soft_time_limit
        return _NO_LIMIT if limit is None else async_soft_time_limit(limit)


async def within_hard_limit(job: Job, call: asyncio.Future[Any], calls: Calls | None) -> Any:
    """Await ``call`` (the task's asyncio task, or its thread's future) under the task's hard ``time_limit``.

    While it runs, ``call`` is kept in ``calls`` under the delivery id: cancelling it there raises
    :class:`Terminated`. Past the limit it is cancelled and :class:`HardTimeLimit` raised (a sync
    task's thread runs on until its function returns: a thread cannot be stopped).
    """
    limit = job.task.options.time_limit
    if calls is not None:
        calls[job.delivery.id] = call
    try:
        done, _ = await asyncio.wait((call,), timeout=limit)
    finally:
        if calls is not None:
            calls.pop(job.delivery.id, None)
    if not done:
        call.cancel()
        raise HardTimeLimit(f"task exceeded its hard time limit of {limit:g}s")
    if call.cancelled():
        raise Terminated("revoked and terminated while running")
    return call.result()


@contextlib.asynccontextmanager
async def async_soft_time_limit(seconds: float) -> AsyncIterator[None]:
    """Cancel the awaited block after ``seconds`` and raise :class:`TimeLimitExceeded` in its place."""
    timeout = asyncio.timeout(seconds)
    try:
        async with timeout:
            yield
    except TimeoutError:
        if not timeout.expired():
            raise
        raise TimeLimitExceeded(f"task exceeded its soft time limit of {seconds:g}s") from None


@contextlib.contextmanager
def soft_time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`TimeLimitExceeded` in the current thread if the block runs past ``seconds``."""
    if seconds is None:
        yield
    elif threading.current_thread() is threading.main_thread():
        with _alarm(seconds):
            yield
    else:
        with _async_raise_after(seconds):
            yield


@contextlib.contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    def expire(signum: int, frame: FrameType | None) -> None:
        raise TimeLimitExceeded(f"task exceeded its soft time limit of {seconds:g}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def _async_raise_after(seconds: float) -> Iterator[None]:
    target = threading.get_ident()
    done = threading.Lock()

    def expire() -> None:
        with done:  # never fire after the block has exited
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(target), ctypes.py_object(TimeLimitExceeded))

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        with done:
            timer.cancel()
