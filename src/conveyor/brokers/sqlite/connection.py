"""One SQLite connection per process and thread, opened lazily, in WAL mode.

Many processes on one machine share the file: the supervisor, every worker child and the
producers. WAL lets readers run beside the one writer; write transactions start with
``BEGIN IMMEDIATE`` so two writers queue on the lock (``busy_timeout``) instead of deadlocking.
A connection is never shared across ``fork()``: each process opens its own on first use.

Durability: ``synchronous=NORMAL`` (the default) makes a committed transaction survive the
crash of any process, ``kill -9`` included; an operating-system crash or power loss may lose
the last transactions. ``?synchronous=full`` in the URL fsyncs every commit (about 10x slower
here: ~2,300 commits/s instead of ~30,000), for power-loss durability.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import os
import random
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from conveyor.errors import BrokerUnavailable, ConfigurationError

#: Milliseconds a writer waits for the lock before the operation fails as BrokerUnavailable.
BUSY_TIMEOUT_MS = 30_000
_SYNC_MODES = {"normal": "NORMAL", "full": "FULL"}


def parse_url(url: str) -> tuple[Path, str]:
    """``sqlite:///relative.db``, ``sqlite:////absolute.db``, optional ``?synchronous=normal|full``.

    Raises:
        ConfigurationError: no path, an in-memory database, an unknown option or synchronous mode.
    """
    parts = urlsplit(url)
    raw = parts.path[1:] if parts.path.startswith("/") else parts.path
    if parts.netloc or not raw:
        raise ConfigurationError(
            f"SQLite URLs look like sqlite:///relative/path.db or sqlite:////abs/path.db, got {url!r}"
        )
    if raw == ":memory:" or "mode=memory" in parts.query:
        # Every connection (each thread, each worker process) would get a private empty database:
        # producers and workers would never see each other's tasks. memory:// is the one-process twin.
        raise ConfigurationError(
            f"{url!r} is an in-memory SQLite database, private to each connection; use a file "
            "(sqlite:///conveyor.db) or memory:// for a single-process broker"
        )
    options = parse_qs(parts.query)
    unknown = sorted(set(options) - {"synchronous"})
    if unknown:
        raise ConfigurationError(f"unknown SQLite URL option(s) {', '.join(unknown)} in {url!r}; known: synchronous")
    mode = options.get("synchronous", ["normal"])[0].lower()
    if mode not in _SYNC_MODES:
        raise ConfigurationError(f"synchronous must be normal or full, got {mode!r} in {url!r}")
    return Path(raw), _SYNC_MODES[mode]


class SQLiteConnection:
    """Hands out this process's and thread's connection to one database file."""

    def __init__(self, url: str) -> None:
        self.path, self.synchronous = parse_url(url)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[tuple[int, sqlite3.Connection]] = []
        this = weakref.ref(self)  # a weak reference: the fork hook must not keep the object alive
        os.register_at_fork(after_in_child=lambda: _forget_in_child(this))

    def _forget_inherited(self) -> None:
        """In a forked child, close the parent's connections so SQLite's copied lock state is dropped.

        SQLite keeps POSIX lock bookkeeping per process; a child that opened a new connection beside
        the inherited ones would share it without holding real locks, and the parent closing its
        connection could then delete the WAL the child writes to.
        """
        inherited, self._all = self._all, []
        for _, conn in inherited:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._local = threading.local()
        self._lock = threading.Lock()

    def get(self) -> sqlite3.Connection:
        """This thread's connection, opened (and the schema applied) on first use in this process."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            return conn
        conn = self._open()
        self._local.conn, self._local.pid = conn, os.getpid()
        with self._lock:
            self._all.append((os.getpid(), conn))
        return conn

    def _open(self) -> sqlite3.Connection:
        """Open a connection, switch the file to WAL and apply the schema, retrying lock races.

        Several processes opening a fresh file at once (a worker's children, say) race to switch
        it to WAL and create the tables. SQLite answers some of those races with "database is
        locked" at once, without calling the busy handler (it would deadlock), so the whole
        opening is retried with a short jittered pause, bounded by ``BUSY_TIMEOUT_MS``.
        """
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        pause = 0.005
        while True:
            try:
                return self._open_once()
            except sqlite3.OperationalError as exc:
                if not _is_lock_race(exc) or time.monotonic() + pause > deadline:
                    raise BrokerUnavailable(f"cannot open SQLite database {self.path}: {exc}") from exc
            except (sqlite3.Error, OSError) as exc:
                raise BrokerUnavailable(f"cannot open SQLite database {self.path}: {exc}") from exc
            time.sleep(pause * (0.5 + random.random()))
            pause = min(pause * 2, 0.2)

    def _open_once(self) -> sqlite3.Connection:
        if self.path.parent != Path():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            # WAL is a property of the file: once one process switched it, the others skip the switch.
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            # One write transaction: BEGIN IMMEDIATE waits for the lock through the busy handler.
            conn.executescript(f"BEGIN IMMEDIATE;\n{_schema()}\nCOMMIT;")
            _add_columns(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT) that always ends, committed or rolled back.

        Whatever stops it, ``BaseException`` included, the transaction is over before the exception
        goes on: an open transaction keeps this process's write lock, and every other producer and
        worker would get "database is locked" until this process exits (issue 11, item 1). A soft
        time limit's SIGALRM, the thread pool's asynchronous exception or Ctrl-C that arrives while
        BEGIN waits for the lock lands when BEGIN returns, holding the lock; a COMMIT can fail
        (a deferred constraint, an I/O error) and leave the transaction open.
        """
        conn = self._idle()
        with self.errors():
            try:
                self._local.writing = True  # inside the try: whatever lands after it, the finally resets it
                conn.execute("BEGIN IMMEDIATE")
                yield conn
                conn.execute("COMMIT")
            finally:
                self._local.writing = False
                if conn.in_transaction:
                    self._end(conn)

    def _idle(self) -> sqlite3.Connection:
        """This thread's connection, outside any transaction.

        A transaction still open here was left by an interruption that landed where no handler
        could end it (inside the handler itself): end it now rather than fail this write too.

        Raises:
            RuntimeError: this thread is inside a write already (transactions do not nest).
        """
        if getattr(self._local, "writing", False):
            raise RuntimeError("SQLite write transactions do not nest: this thread is inside one already")
        conn = self.get()
        if conn.in_transaction:
            self._end(conn)
            conn = self.get()
        return conn

    def _end(self, conn: sqlite3.Connection) -> None:
        """Roll back; a connection that cannot roll back is closed (which releases its locks) and replaced.

        Errors of the rollback are not raised: the exception that ended the transaction is the one to report.
        """
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # the check below closes the connection
        finally:
            if conn.in_transaction:
                self._discard(conn)

    def _discard(self, conn: sqlite3.Connection) -> None:
        """Close one connection of this process and forget it; the thread's next ``get()`` opens a new one."""
        with self._lock:
            self._all = [(pid, c) for pid, c in self._all if c is not conn]
        if getattr(self._local, "conn", None) is conn:
            del self._local.conn
        with contextlib.suppress(sqlite3.Error):
            conn.close()

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """Turn SQLite's operational errors (locked, I/O) into BrokerUnavailable naming the file."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            raise BrokerUnavailable(f"SQLite database {self.path}: {exc}") from exc

    def close(self) -> None:
        """Close the connections this process opened."""
        with self._lock:
            mine = [c for pid, c in self._all if pid == os.getpid()]
            self._all = [(pid, c) for pid, c in self._all if pid != os.getpid()]
        for conn in mine:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._local = threading.local()


def _is_lock_race(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def _forget_in_child(ref: weakref.ref[SQLiteConnection]) -> None:
    connection = ref()
    if connection is not None:
        connection._forget_inherited()


#: Columns of ``messages`` added after the first release, with their definition (see schema.sql).
_ADDED_COLUMNS = {"started": "INTEGER NOT NULL DEFAULT 0", "requeues": "INTEGER NOT NULL DEFAULT 0"}


def _add_columns(conn: sqlite3.Connection) -> None:
    """Add the columns an older file's ``messages`` table lacks (CREATE TABLE IF NOT EXISTS keeps the old one).

    Looked at outside a transaction first, so an up-to-date file costs one read; the look is repeated
    under the write lock, since another process may be adding them at the same moment.
    """
    if not _missing_columns(conn):
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for name in _missing_columns(conn):
            conn.execute(f"ALTER TABLE messages ADD COLUMN {name} {_ADDED_COLUMNS[name]}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _missing_columns(conn: sqlite3.Connection) -> list[str]:
    have = {row[1] for row in conn.execute("PRAGMA table_info(messages)")}
    return [name for name in _ADDED_COLUMNS if name not in have]


def _schema() -> str:
    return importlib.resources.files("conveyor.brokers.sqlite").joinpath("schema.sql").read_text()
