"""BufferedStreamHandler: a stream handler that writes lines in batches, for a worker's line per task.

The standard ``StreamHandler`` writes and flushes (one ``write`` system call) per line. This one
holds formatted lines and writes them in one call every ``FLUSH_INTERVAL`` seconds, at once for
WARNING and above, before a fork and at exit (``logging.shutdown`` at interpreter exit; a worker
child, which leaves by ``os._exit``, calls :func:`flush_all`). ``conveyor.logging`` installs it
(and re-exports it, for ``dictConfig``: ``"class": "conveyor.logging.BufferedStreamHandler"``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import weakref
from typing import IO

__all__ = ["FLUSH_INTERVAL", "MAX_BUFFERED", "BufferedStreamHandler", "flush_all"]

#: Seconds a line may wait in a :class:`BufferedStreamHandler` before it is written.
FLUSH_INTERVAL = 0.1
#: Lines a :class:`BufferedStreamHandler` holds at most before it writes them at once.
MAX_BUFFERED = 1024

_buffered: weakref.WeakSet[BufferedStreamHandler] = weakref.WeakSet()


class BufferedStreamHandler(logging.Handler):
    """Writes formatted lines to a stream in batches: one ``write`` and ``flush`` per batch, not per line.

    A line is written at most ``interval`` seconds after it was logged (a daemon thread, started on
    the first line and again in a forked child, wakes only when lines wait), at once for records at
    ``flush_level`` or above, when ``max_lines`` gathered, before the process forks (so a child does
    not inherit, and repeat, its parent's lines) and on :meth:`flush` (``logging.shutdown`` at exit,
    :func:`flush_all`). Records reach the handler as real ``LogRecord`` objects: only the writing waits.

    Args:
        stream: where lines go; ``sys.stderr`` (read when writing, so a replaced stderr is honoured) if None.
        interval: seconds a line waits at most.
        flush_level: records at this level or above are written at once, with what waited before them.
        max_lines: lines held at most.
    """

    def __init__(
        self,
        stream: IO[str] | None = None,
        *,
        interval: float = FLUSH_INTERVAL,
        flush_level: int = logging.WARNING,
        max_lines: int = MAX_BUFFERED,
    ) -> None:
        super().__init__()
        self._stream = stream
        self.interval = interval
        self.flush_level = flush_level
        self.max_lines = max_lines
        self._lines: list[str] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        self._closed = False
        _buffered.add(self)

    @property
    def stream(self) -> IO[str]:
        """The stream lines are written to."""
        return self._stream if self._stream is not None else sys.stderr

    def emit(self, record: logging.LogRecord) -> None:
        """Format ``record`` now and hold the line (``Handler.handle`` calls this under the handler's lock)."""
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        lines = self._lines
        lines.append(line)
        if record.levelno >= self.flush_level or len(lines) >= self.max_lines or self._closed:
            self._write()
        elif len(lines) == 1:
            if self._flusher is None:
                self._start_flusher()
            self._wake.set()

    def emit_line(self, line: str, level: int) -> None:
        """Hold a line formatted without a record (``conveyor.logging.quick_log``), as :meth:`emit` holds one."""
        self.acquire()
        try:
            lines = self._lines
            lines.append(line)
            if level >= self.flush_level or len(lines) >= self.max_lines or self._closed:
                self._write()
            elif len(lines) == 1:
                if self._flusher is None:
                    self._start_flusher()
                self._wake.set()
        finally:
            self.release()

    def flush(self) -> None:
        """Write every waiting line now."""
        self.acquire()
        try:
            self._write()
        finally:
            self.release()

    def close(self) -> None:
        """Write what waits; later lines are written at once (a handler closed at exit may still get some)."""
        self.flush()
        self._closed = True
        self._stop.set()
        self._wake.set()
        flusher = self._flusher
        if flusher is not None and flusher is not threading.current_thread():
            flusher.join(self.interval + 1.0)  # no thread left behind (a later fork would copy none)
        super().close()

    def _write(self) -> None:
        """Write the waiting lines in one call (the caller holds the lock)."""
        if not self._lines:
            return
        text = "\n".join(self._lines) + "\n"
        self._lines.clear()
        # A closed or broken stream (a pipe whose reader left) must not break the worker.
        with contextlib.suppress(Exception):
            stream = self.stream
            stream.write(text)
            stream.flush()

    def _start_flusher(self) -> None:
        thread = threading.Thread(target=self._flush_loop, name="conveyor-log-flusher", daemon=True)
        self._flusher = thread
        thread.start()

    def _flush_loop(self) -> None:
        wake, stop = self._wake, self._stop
        while not stop.is_set():
            wake.wait()
            stop.wait(self.interval)  # let the batch gather (close() cuts it short)
            wake.clear()
            # Not flush(): logging.shutdown() calls close() holding the lock, and close() joins this
            # thread, so waiting here for the lock held the exit up for the join's whole timeout (a
            # second per worker stop). Once stopped, give up: close() wrote the lines.
            while not self._lock().acquire(timeout=0.05):
                if stop.is_set():
                    return
            try:
                self._write()
            finally:
                self.release()

    def _lock(self) -> threading.RLock:
        lock = self.lock
        assert lock is not None  # createLock() in Handler.__init__
        return lock

    def _after_fork_in_child(self) -> None:
        """The flusher thread did not survive the fork; the lines were written before it."""
        self._lines.clear()
        self._wake, self._stop = threading.Event(), threading.Event()
        self._flusher = None


def flush_all() -> None:
    """Write what every :class:`BufferedStreamHandler` of this process holds (a worker child calls this last)."""
    for handler in list(_buffered):
        handler.flush()


#: The handlers whose locks ``_before_fork`` holds across a fork (released after it in the parent).
_held: list[BufferedStreamHandler] = []


def _before_fork() -> None:
    """Write what waits and hold each handler's lock across the fork.

    Holding the lock keeps the flusher thread out of ``stream.write`` while the process forks: a
    child forked while that thread held the stream's internal lock would block on its first write
    to stderr for ever (the stream's lock, unlike logging's, is not reset in a child).
    """
    for handler in list(_buffered):
        handler.acquire()
        _held.append(handler)
        with contextlib.suppress(Exception):
            handler._write()


def _after_fork_in_parent() -> None:
    while _held:
        _held.pop().release()


def _after_fork_in_child() -> None:
    _held.clear()  # logging reset every handler's lock in this child already (its hook runs first)
    for handler in list(_buffered):
        handler._after_fork_in_child()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)
