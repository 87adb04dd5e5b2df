"""A middleware that gives every task a database transaction: committed if the task returns,
rolled back if it raises, so a failed attempt leaves nothing behind and its retry starts clean.

::

    EXAMPLE_DB=orders.db conveyor worker examples.middleware:app -c 2

- ``on_child_start`` / ``on_child_stop``: each worker child (a process that runs tasks) keeps its
  own small pool of connections, made in that child (never shared across ``fork()``) and closed
  when it stops. ``testing.drain`` runs the same hooks around a drain.
- ``around_call``: a transaction around the call; the task reaches it with ``session()``.
- ``options``: the middleware owns a task option, ``readonly``: such a task's transaction is
  always rolled back. mypy knows only conveyor's own options, so a custom one is passed as
  ``**{"readonly": True}`` from a ``dict[str, Any]``; it is checked at run time like the others.
- ``after_settle``: counts how each task ended (``Outcome.ended``), e.g. for metrics.

The test suite runs this file with a real worker on SQLite (tests/e2e/test_middleware_example.py).
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import os
import queue
import sqlite3
from collections.abc import Iterator
from typing import Any, ClassVar

from conveyor import App, Job, Middleware, Outcome

_session: contextvars.ContextVar[sqlite3.Connection] = contextvars.ContextVar("example_session")


def session() -> sqlite3.Connection:
    """The running task's connection, inside its transaction."""
    try:
        return _session.get()
    except LookupError:
        raise RuntimeError("session() is only available inside a task run with DbSession") from None


class DbSession(Middleware):
    """One transaction per task, on a per-child pool of SQLite connections.

    Args:
        path: the database file.
    """

    options: ClassVar[frozenset[str]] = frozenset({"readonly"})

    def __init__(self, path: str) -> None:
        self.path = path
        self._idle: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._all: list[sqlite3.Connection] = []
        self.ended: collections.Counter[str] = collections.Counter()

    def on_child_start(self, app: App) -> None:
        conn = self._connect()
        conn.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, sku TEXT, qty INTEGER)")
        self._idle.put(conn)

    def on_child_stop(self, app: App) -> None:
        self._idle = queue.SimpleQueue()
        for conn in self._all:
            conn.close()
        self._all.clear()

    @contextlib.contextmanager
    def around_call(self, job: Job) -> Iterator[None]:
        conn = self._take()
        token = _session.set(conn)
        conn.execute("BEGIN")
        try:
            yield
        except BaseException:
            conn.rollback()
            raise
        else:
            if job.options.extra.get("readonly"):
                conn.rollback()
            else:
                conn.commit()
        finally:
            _session.reset(token)
            self._idle.put(conn)

    def after_settle(self, job: Job, outcome: Outcome) -> None:
        self.ended[outcome.ended] += 1

    def _take(self) -> sqlite3.Connection:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            return self._connect()

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: the middleware opens and ends each transaction itself.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
        self._all.append(conn)
        return conn


# CONVEYOR_BROKER_URL overrides the queue's URL, EXAMPLE_DB the orders database.
app = App(
    "orders", broker="sqlite:///orders-queue.db", middleware=[DbSession(os.environ.get("EXAMPLE_DB", "orders.db"))]
)

READONLY: dict[str, Any] = {"readonly": True}


@app.task
def place_order(sku: str, qty: int) -> int:
    """Insert an order; its row is committed when the task returns."""
    cursor = session().execute("INSERT INTO orders (sku, qty) VALUES (?, ?)", (sku, qty))
    assert cursor.lastrowid is not None
    return cursor.lastrowid


@app.task(retries=1, backoff=0.01)
def place_then_fail(sku: str) -> None:
    """Insert an order, then fail: each attempt's row is rolled back."""
    session().execute("INSERT INTO orders (sku, qty) VALUES (?, ?)", (sku, 1))
    raise RuntimeError("payment declined")


@app.task(**READONLY)
def count_orders() -> int:
    """Read in a transaction that is never committed."""
    session().execute("INSERT INTO orders (sku, qty) VALUES ('phantom', 0)")  # rolled back: readonly
    row = session().execute("SELECT count(*) FROM orders WHERE sku != 'phantom'").fetchone()
    return int(row[0])
