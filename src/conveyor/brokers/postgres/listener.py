"""One LISTEN connection per process: wakes idle reserves and result waiters the moment work lands.

A daemon thread holds a connection that listens on ``cv:<schema>`` (a message became ready or
scheduled: the ``messages_wake`` trigger) and ``cv:<schema>:r`` (a result reached a final state:
``cv_set_results``). Each wake-up on the first channel advances :attr:`Listener.generation`; a result
wake-up hands its record (carried in the payload when small) to the waiters on that task id.
PostgreSQL sends a notification at commit, so a rolled-back enqueue wakes nobody.

No query runs while nothing happens: the thread blocks on the socket. When the connection drops (the
server restarts), the thread reconnects with backoff, and on success advances the generation and wakes
every result waiter, since notifications sent meanwhile were lost: they look again once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import socket
import threading
from typing import Any

import psycopg
from psycopg import sql

log = logging.getLogger("conveyor.postgres")

#: Seconds between the thread's looks at its stop flag while the socket is silent (no query is sent).
STOP_CHECK = 1.0
#: Reconnection backoff after the listening connection dropped: first and longest pause, in seconds.
RETRY_MIN, RETRY_MAX = 0.05, 2.0


class Listener:
    """The process's listening connection, started at construction (see the module docstring)."""

    def __init__(self, conninfo: str, schema: str) -> None:
        self.conninfo = conninfo
        self.work_channel = f"cv:{schema}"
        self.result_channel = f"cv:{schema}:r"
        self.generation = 0
        self.listening = False
        #: Set by :meth:`stop_waits`: every wait_work returns at once from then on.
        self.waits_stopped = False
        self._cond = threading.Condition()
        self._results: dict[str, list[ResultWaiter]] = {}
        self._stop = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None
        self._thread = threading.Thread(target=self._run, name="conveyor-pg-listen", daemon=True)
        self._thread.start()

    def wait_listening(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until the connection listens (or waits are stopped); True when it listens."""
        with self._cond:
            self._cond.wait_for(lambda: self.listening or self.waits_stopped, timeout)
            return self.listening

    def wait_work(self, seen: int, timeout: float) -> int:
        """Block until the generation moves past ``seen`` or ``timeout`` seconds passed; return the generation."""
        with self._cond:
            self._cond.wait_for(lambda: self.generation != seen or self.waits_stopped, timeout)
            return self.generation

    def stop_waits(self) -> None:
        """End the work waits in progress and every later one at once (safe in a signal handler: an RLock)."""
        with self._cond:
            self.waits_stopped = True
            self._cond.notify_all()

    @property
    def waiting(self) -> int:
        """How many result waiters are registered (0 once every wait ended, cancelled ones included)."""
        with self._cond:
            return sum(len(waiters) for waiters in self._results.values())

    def watch(self, task_id: str, future: asyncio.Future[None] | None = None) -> ResultWaiter:
        """A waiter woken when ``task_id``'s result lands (call before reading it; :meth:`unwatch` after).

        ``future`` (a coroutine's, on its loop) is resolved too, from this thread, through its loop.
        """
        waiter = ResultWaiter(future)
        with self._cond:
            self._results.setdefault(task_id, []).append(waiter)
        return waiter

    def unwatch(self, task_id: str, waiter: ResultWaiter) -> None:
        with self._cond:
            waiters = self._results.get(task_id, [])
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters:
                self._results.pop(task_id, None)

    def _run(self) -> None:
        pause = RETRY_MIN
        while not self._stop.is_set():
            try:
                self._listen()
                pause = RETRY_MIN
            except psycopg.Error as exc:
                log.debug("LISTEN connection lost (%s); reconnecting", exc)
            finally:
                self._lost()
            if self._stop.wait(pause):
                return
            pause = min(pause * 2, RETRY_MAX)

    def _listen(self) -> None:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            self._conn = conn
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.work_channel)))
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.result_channel)))
            self._wake_all(listening=True)  # anything sent while we were not listening: look again
            while not self._stop.is_set():
                for note in conn.notifies(timeout=STOP_CHECK):
                    self._deliver(note.channel, note.payload)

    def _deliver(self, channel: str, payload: str) -> None:
        with self._cond:
            if channel == self.result_channel:
                task_id, _, rest = payload.partition(" ")
                encoded = rest.partition(" ")[2]
                record = _decode(encoded) if encoded else None
                for waiter in self._results.get(task_id, ()):
                    waiter.wake(record)
            else:
                self.generation += 1
                self._cond.notify_all()

    def _wake_all(self, *, listening: bool) -> None:
        with self._cond:
            self.listening = listening
            self.generation += 1
            for waiters in self._results.values():
                for waiter in waiters:
                    waiter.wake(None)
            self._cond.notify_all()

    def _lost(self) -> None:
        self._conn = None
        if self.listening:
            self._wake_all(listening=False)

    def close(self) -> None:
        """Stop the thread and close its connection (at once: its socket is shut down under its wait)."""
        self._stop.set()
        conn = self._conn
        if conn is not None:  # else the wait for notifications would end only after STOP_CHECK seconds
            with (
                contextlib.suppress(OSError, psycopg.Error),
                socket.fromfd(conn.fileno(), socket.AF_INET, socket.SOCK_STREAM) as sock,  # a dup of its socket
            ):
                sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(RuntimeError):
            self._thread.join(STOP_CHECK + 1)


class ResultWaiter:
    """One wait on one task id: an event (and a coroutine's future), and the final record when the
    notification carried it."""

    def __init__(self, future: asyncio.Future[None] | None = None) -> None:
        self.event = threading.Event()
        self.record: bytes | None = None
        self.future = future

    def wake(self, record: bytes | None) -> None:
        if record is not None:
            self.record = record
        self.event.set()
        if self.future is not None:
            with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits any more
                self.future.get_loop().call_soon_threadsafe(_resolve, self.future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _decode(encoded: str) -> bytes | None:
    try:
        return base64.b64decode(encoded)
    except (binascii.Error, ValueError):
        return None  # not a record: the waiter reads the row instead
