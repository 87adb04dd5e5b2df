"""A SQLite write transaction always ends, whatever interrupts it (issue 11, item 1).

An exception that lands between ``BEGIN IMMEDIATE`` and ``COMMIT`` (a soft time limit's SIGALRM,
the thread pool's asynchronous exception, Ctrl-C) or a COMMIT that fails must not leave the
transaction open: the process would keep the write lock, and every other producer and worker would
get "database is locked" until it exits. Each interruption test holds the lock from another
process, so the interrupted write really waits for it, then proves that nobody holds it afterwards.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conveyor.backends.sqlite import SQLiteResultBackend
from conveyor.brokers import Envelope
from conveyor.brokers.sqlite import SQLiteBroker
from conveyor.brokers.sqlite.connection import SQLiteConnection
from conveyor.errors import BrokerUnavailable, TimeLimitExceeded
from conveyor.states import State
from conveyor.worker.timelimits import soft_time_limit

#: Seconds the other process holds the write lock: well past the interruption, which comes at 0.2 s.
HOLD = 1.0
INTERRUPT_AFTER = 0.2

# Takes the write lock, says "held", keeps it HOLD seconds, then commits and exits.
HOLDER = textwrap.dedent(
    """
    import sqlite3, sys, time
    conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
    conn.execute("BEGIN IMMEDIATE")
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
    conn.execute("COMMIT")
    """
)

# Another process tries to take the write lock, waiting at most 0.5 s; prints "free" or the error.
PROBE = textwrap.dedent(
    """
    import sqlite3, sys
    conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=0.5)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        print("free")
    except sqlite3.OperationalError as exc:
        print(exc)
    """
)


def another_process_can_write(path: Path) -> str:
    """Take the write lock from a fresh process: "free" when nobody holds it."""
    done = subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, timeout=20)
    return done.stdout.strip() or done.stderr


@contextlib.contextmanager
def lock_held_elsewhere(path: Path) -> Iterator[None]:
    """Another process holds the write lock for HOLD seconds from when this block starts."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), str(HOLD)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "held"
        yield
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()


def interrupted_in_main_thread(how: str, write: Callable[[], object], db: SQLiteConnection, path: Path) -> bool:
    """Run ``write`` under ``how`` in this (the main) thread; return ``in_transaction`` afterwards."""
    write()  # this thread's connection is open (a worker's always is)
    with lock_held_elsewhere(path):
        if how == "soft time limit (SIGALRM)":
            with pytest.raises(TimeLimitExceeded), soft_time_limit(INTERRUPT_AFTER):
                write()
        else:  # Ctrl-C: a real SIGINT, turned into KeyboardInterrupt by Python's default handler
            previous = signal.signal(signal.SIGINT, signal.default_int_handler)
            timer = threading.Timer(INTERRUPT_AFTER, os.kill, (os.getpid(), signal.SIGINT))
            try:
                timer.start()
                with pytest.raises(KeyboardInterrupt):
                    write()
            finally:
                timer.cancel()
                signal.signal(signal.SIGINT, previous)
    return db.get().in_transaction


def interrupted_in_thread(write: Callable[[], object], db: SQLiteConnection, path: Path) -> bool:
    """Run ``write`` under a thread-pool soft limit (an asynchronous exception) in another thread."""
    seen: list[object] = []
    opened, go = threading.Event(), threading.Event()

    def run() -> None:
        write()  # this thread's connection is open before the other process takes the lock
        opened.set()
        go.wait(20)
        try:
            with soft_time_limit(INTERRUPT_AFTER):
                write()
        except TimeLimitExceeded as exc:
            seen.append(exc)
        seen.append(db.get().in_transaction)  # this thread's connection is the one that waited

    thread = threading.Thread(target=run)
    thread.start()
    assert opened.wait(20)
    with lock_held_elsewhere(path):
        go.set()
        thread.join(timeout=20)
    assert not thread.is_alive()
    assert isinstance(seen[0], TimeLimitExceeded), seen
    return bool(seen[1])


INTERRUPTIONS = ["soft time limit (SIGALRM)", "soft time limit (thread pool)", "KeyboardInterrupt (SIGINT)"]


@pytest.mark.parametrize("how", INTERRUPTIONS)
@pytest.mark.parametrize("target", ["broker enqueue", "backend set (ctx.progress)"])
def test_an_interrupted_write_waiting_for_the_lock_leaves_no_transaction(tmp_path: Path, how: str, target: str) -> None:
    # Given a broker and a backend on one file, and another process holding the write lock
    path = tmp_path / "conveyor.db"
    broker = SQLiteBroker.from_url(f"sqlite:///{path}")
    backend = SQLiteResultBackend(f"sqlite:///{path}")
    db = broker.db if target == "broker enqueue" else backend.db

    def write() -> None:
        if target == "broker enqueue":
            broker.enqueue([Envelope(uuid.uuid4().hex, "default", b"x")])
        else:
            backend.set(uuid.uuid4().hex, State.STARTED, b"{}", 60)

    try:
        # When the write is interrupted while it waits for the lock (the exception lands when BEGIN returns)
        if how == "soft time limit (thread pool)":
            in_transaction = interrupted_in_thread(write, db, path)
        else:
            in_transaction = interrupted_in_main_thread(how, write, db, path)
        # Then no transaction is left open, another process can write at once, and so can this one
        assert in_transaction is False
        assert another_process_can_write(path) == "free"
        write()
    finally:
        broker.close()
        backend.close()


def test_a_commit_that_fails_is_rolled_back(tmp_path: Path) -> None:
    # Given a table whose foreign key is checked at COMMIT (deferred), so that COMMIT itself fails
    path = tmp_path / "conveyor.db"
    db = SQLiteConnection(f"sqlite:///{path}")
    conn = db.get()
    conn.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    conn.execute("CREATE TABLE child (id INTEGER PRIMARY KEY, parent REFERENCES parent DEFERRABLE INITIALLY DEFERRED)")
    conn.execute("PRAGMA foreign_keys = ON")
    try:
        # When a write transaction's COMMIT fails
        with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"), db.write() as tx:
            tx.execute("INSERT INTO child VALUES (1, 99)")
        # Then the transaction is over: the lock is free, the connection writes again, the row is gone
        assert db.get().in_transaction is False
        assert another_process_can_write(path) == "free"
        with db.write() as tx:
            tx.execute("INSERT INTO parent VALUES (1)")
        assert db.get().execute("SELECT COUNT(*) FROM child").fetchone()[0] == 0
    finally:
        db.close()


def test_a_full_database_reports_the_real_error_and_stays_usable(tmp_path: Path) -> None:
    # Given a broker whose database cannot grow (max_page_count: SQLite answers SQLITE_FULL, "disk full")
    path = tmp_path / "conveyor.db"
    broker = SQLiteBroker.from_url(f"sqlite:///{path}")
    conn = broker.db.get()
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    try:
        # When a write fails because the database is full
        with pytest.raises(BrokerUnavailable, match="database or disk is full"):
            broker.enqueue([Envelope(uuid.uuid4().hex, "default", b"x" * 200_000)])
        # Then the error says so, no transaction is left open, and once there is room it writes again
        assert broker.db.get().in_transaction is False
        assert another_process_can_write(path) == "free"
        broker.db.get().execute("PRAGMA max_page_count = 1073741823")
        assert len(broker.enqueue([Envelope(uuid.uuid4().hex, "default", b"x" * 200_000)])) == 1
    finally:
        broker.close()


def test_a_transaction_left_open_on_the_connection_is_ended_by_the_next_write(tmp_path: Path) -> None:
    # Given a connection left inside a transaction (an interruption that landed where no handler ran)
    path = tmp_path / "conveyor.db"
    broker = SQLiteBroker.from_url(f"sqlite:///{path}")
    broker.db.get().execute("BEGIN IMMEDIATE")
    try:
        # When this thread writes again
        broker.enqueue([Envelope(uuid.uuid4().hex, "default", b"x")])
        # Then the write succeeds in a transaction of its own and leaves the lock free
        assert broker.db.get().in_transaction is False
        assert another_process_can_write(path) == "free"
    finally:
        broker.close()
