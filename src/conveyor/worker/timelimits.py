"""Soft time limits: raise TimeLimitExceeded inside a task that runs too long.

In a process-pool child the task runs in the main thread, so a SIGALRM timer interrupts it even
in a blocking call such as ``time.sleep``. In a thread-pool slot the exception is set
asynchronously on the thread (CPython's ``PyThreadState_SetAsyncExc``), which takes effect at the
next Python bytecode: a thread blocked in C code sees it when the call returns. Hard limits are
the supervisor's job (it replaces the process).
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from conveyor.errors import TimeLimitExceeded


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
