"""PostgreSQL URLs, one connection pool per process, errors, and the schema version check.

``postgresql://user:pass@host:port/db?schema=conveyor&pool_size=10``: ``schema`` (default
``conveyor``) names the schema that holds conveyor's tables (several apps or test runs can share one
database, each in its schema), ``pool_size`` the most connections one process opens (default 10). Any
other parameter (``sslmode``, ``connect_timeout``, ...) goes to libpq as it is.

A pool (psycopg_pool) is opened lazily per process: a broker built before ``fork()`` (a worker's
supervisor) opens a fresh pool in each child, and the parent's connections, which the child inherited,
are kept referenced and never closed there, since closing them would end the parent's sessions.

The first use in a process checks the schema's version (``migrate.py``): a schema older than this
conveyor needs is refused with the command that migrates it.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import weakref
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolTimeout

from conveyor.brokers._urls import safe_url
from conveyor.brokers.postgres.listener import Listener
from conveyor.brokers.postgres.migrate import REQUIRED, check_version, migrate
from conveyor.errors import BrokerUnavailable, ConfigurationError

#: The schema conveyor's tables live in when the URL names none.
DEFAULT_SCHEMA = "conveyor"
#: Most connections one process holds open (a worker child uses two or three: reserve, heartbeat, results).
DEFAULT_POOL_SIZE = 10
#: Seconds a caller waits for a pooled connection (the server down: the pool cannot make one) before
#: the operation fails as BrokerUnavailable.
POOL_TIMEOUT = 10.0
#: Seconds libpq waits for a new connection when the URL does not say (``connect_timeout``).
CONNECT_TIMEOUT = 5
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
#: Objects a forked child inherited and must never free (freeing a connection ends the parent's session).
_INHERITED: list[object] = []


def parse_url(url: str) -> tuple[str, str, int]:
    """Split a conveyor PostgreSQL URL into (libpq conninfo URL, schema, pool size).

    Raises:
        ConfigurationError: a bad schema name or pool size.
    """
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {name: value for name, value in query if name in {"schema", "pool_size"}}
    schema = ours.get("schema", DEFAULT_SCHEMA)
    if not _SCHEMA_NAME.fullmatch(schema):
        raise ConfigurationError(
            f"schema= must be a lower-case PostgreSQL name (letters, digits, _), got {schema!r} in {safe_url(url)!r}"
        )
    try:
        size = int(ours.get("pool_size", DEFAULT_POOL_SIZE))
    except ValueError:
        size = 0
    if size < 1:
        raise ConfigurationError(f"pool_size= must be a positive integer in {safe_url(url)!r}")
    rest = [(name, value) for name, value in query if name not in ours]
    if not any(name == "connect_timeout" for name, _ in rest):
        rest.append(("connect_timeout", str(CONNECT_TIMEOUT)))
    conninfo = f"postgresql://{parts.netloc}{parts.path}?{urlencode(rest)}"
    return conninfo, schema, size


class PostgresConnection:
    """This process's connection pool to one schema, opened on first use, and its listener.

    Args:
        url: a ``postgresql://`` or ``postgres://`` URL (see the module docstring).
    """

    def __init__(self, url: str) -> None:
        self.conninfo, self.schema, self.pool_size = parse_url(url)
        self.url = safe_url(url)
        self.ident = sql.Identifier(self.schema)
        self._lock = threading.Lock()
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._listener: Listener | None = None
        self._pid = os.getpid()
        this = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _forget_in_child(this))

    def _forget_inherited(self) -> None:
        """In a forked child: drop (but keep alive, unclosed) the parent's pool and listener."""
        _INHERITED.extend(o for o in (self._pool, self._listener) if o is not None)
        self._pool, self._listener = None, None
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def pool(self) -> ConnectionPool[psycopg.Connection[Any]]:
        """This process's pool, opened (and the schema version checked) on first use."""
        pool = self._pool
        if pool is not None:
            return pool
        with self._lock:
            if self._pool is None:
                # A plain first connection: a server that does not answer fails here at once, in one line
                # (the pool would retry in the background, logging each try), and the version is checked.
                with self.errors(), psycopg.connect(self.conninfo, autocommit=True) as conn:
                    check_version(conn, self.schema)
                pool = ConnectionPool(
                    self.conninfo,
                    min_size=1,
                    max_size=self.pool_size,
                    kwargs={"autocommit": True},
                    timeout=POOL_TIMEOUT,
                    open=False,
                    name=f"conveyor-{self.schema}",
                )
                pool.open(wait=False)
                self._pool = pool
            return self._pool

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection in autocommit mode; server and pool errors become BrokerUnavailable."""
        pool = self.pool()
        with self.errors(), pool.connection() as conn:
            yield conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection inside one transaction (committed on exit, rolled back on any exception)."""
        with self.connection() as conn, conn.transaction():
            yield conn

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """Turn a lost server or an exhausted pool into BrokerUnavailable naming the URL (password hidden), one line."""
        try:
            yield
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise BrokerUnavailable(f"PostgreSQL {self.url}: {' '.join(str(exc).split())}") from exc

    def migrate(self) -> list[str]:
        """Bring the schema up to date (``migrate.py``); one line per migration applied, or one saying none was.

        Raises:
            BrokerUnavailable: the server did not answer.
        """
        with self.errors():
            applied = migrate(self.conninfo, self.schema)
        where = f"PostgreSQL schema {self.schema!r} at {self.url}"
        if not applied:
            return [f"{where}: up to date (version {REQUIRED})"]
        return [f"{where}: applied {m.version:04d}_{m.name}" for m in applied]

    def listener(self) -> Listener:
        """This process's LISTEN connection (started on first use): wakes idle reserves and result waits."""
        listener = self._listener
        if listener is not None:
            return listener
        with self._lock:
            if self._listener is None:
                self._listener = Listener(self.conninfo, self.schema)
            return self._listener

    def started_listener(self) -> Listener | None:
        """This process's LISTEN connection if one was started (None: nothing waits on it)."""
        return self._listener

    def close(self) -> None:
        """Close this process's pool and listener; they reopen on next use."""
        with self._lock:
            pool, listener = self._pool, self._listener
            self._pool, self._listener = None, None
        if listener is not None:
            listener.close()
        if pool is not None:
            pool.close()


def _forget_in_child(ref: weakref.ref[PostgresConnection]) -> None:
    connection = ref()
    if connection is not None:
        connection._forget_inherited()
