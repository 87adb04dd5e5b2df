"""SQLiteResultBackend: results in the ``results`` table of the same file as the SQLite broker.

``wait()`` polls with short adaptive sleeps (1 ms growing to 20 ms): SQLite has no notification
across processes, and a read in WAL mode costs microseconds and takes no lock. Expired rows are
invisible at once and deleted by an occasional sweep.

Leases, claims and values (the coordination primitives) are rows of the ``leases``, ``claims`` and
``kv`` tables, each operation one ``BEGIN IMMEDIATE`` transaction, so processes on the machine
serialize on the write lock and a check-then-write can never interleave with another.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

from conveyor.backends.base import MAX_BATCHES, ResultBackend
from conveyor.brokers.sqlite.connection import SQLiteConnection
from conveyor.states import FINAL_STATES, State

#: Seconds between sweeps of expired results (per process).
SWEEP_EVERY = 60.0
#: Adaptive polling of wait(): first and longest sleep in seconds.
POLL_MIN, POLL_MAX = 0.001, 0.02
_FINAL = tuple(str(s) for s in FINAL_STATES)


class SQLiteResultBackend(ResultBackend):
    """Results in a SQLite file; ``sqlite:///path`` URLs (the broker's file by default)."""

    def __init__(self, url: str) -> None:
        self.db = SQLiteConnection(url)
        self._next_sweep = time.monotonic() + SWEEP_EVERY

    def set(self, task_id: str, state: State, record: bytes, ttl: float) -> None:
        self.set_many([(task_id, state, record)], ttl)

    def set_many(self, items: Sequence[tuple[str, State, bytes]], ttl: float) -> None:
        expires = time.time() + ttl
        with self.db.write() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO results (id, state, record, expires_at) VALUES (?, ?, ?, ?)",
                [(task_id, str(state), record, expires) for task_id, state, record in items],
            )
            self._sweep(conn)

    def _sweep(self, conn: sqlite3.Connection) -> None:
        """Every SWEEP_EVERY seconds, delete expired results, claims and values (they are invisible already)."""
        if time.monotonic() < self._next_sweep:
            return
        self._next_sweep = time.monotonic() + SWEEP_EVERY
        now = time.time()
        conn.execute("DELETE FROM results WHERE expires_at <= ?", (now,))
        conn.execute("DELETE FROM claims WHERE expires_at <= ?", (now,))
        conn.execute("DELETE FROM kv WHERE expires_at <= ?", (now,))

    def _read(self, task_id: str) -> tuple[str, bytes] | None:
        with self.db.errors():
            row = (
                self.db.get()
                .execute("SELECT state, record FROM results WHERE id = ? AND expires_at > ?", (task_id, time.time()))
                .fetchone()
            )
        return None if row is None else (row[0], row[1])

    def get(self, task_id: str) -> bytes | None:
        row = self._read(task_id)
        return None if row is None else row[1]

    def wait(self, task_id: str, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        pause = POLL_MIN
        while True:
            row = self._read(task_id)
            remaining = deadline - time.monotonic()
            if (row is not None and row[0] in _FINAL) or remaining <= 0:
                return None if row is None else row[1]
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, POLL_MAX)

    def forget(self, task_id: str) -> None:
        with self.db.write() as conn:
            conn.execute("DELETE FROM results WHERE id = ?", (task_id,))

    def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        now = time.time()
        with self.db.write() as conn:
            # Take a free or expired lease, or renew our own; a live lease of another owner is left alone.
            conn.execute(
                "INSERT INTO leases (name, owner, expires_at) VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE "
                "SET owner = excluded.owner, expires_at = excluded.expires_at "
                "WHERE leases.owner = excluded.owner OR leases.expires_at <= ?",
                (name, owner, now + ttl, now),
            )
            row = conn.execute("SELECT owner FROM leases WHERE name = ?", (name,)).fetchone()
        return row is not None and row[0] == owner

    def lease_holder(self, name: str) -> str | None:
        with self.db.errors():
            row = (
                self.db.get()
                .execute("SELECT owner FROM leases WHERE name = ? AND expires_at > ?", (name, time.time()))
                .fetchone()
            )
        return None if row is None else str(row[0])

    def release_lease(self, name: str, owner: str) -> None:
        with self.db.write() as conn:
            conn.execute("DELETE FROM leases WHERE name = ? AND owner = ?", (name, owner))

    def claim(self, key: str, ttl: float) -> bool:
        now = time.time()
        with self.db.write() as conn:
            conn.execute("DELETE FROM claims WHERE key = ? AND expires_at <= ?", (key, now))
            created = conn.execute(
                "INSERT OR IGNORE INTO claims (key, expires_at) VALUES (?, ?)", (key, now + ttl)
            ).rowcount
            self._sweep(conn)
        return created == 1

    def unclaim(self, key: str) -> None:
        with self.db.write() as conn:
            conn.execute("DELETE FROM claims WHERE key = ?", (key,))

    def get_value(self, key: str) -> bytes | None:
        with self.db.errors():
            row = (
                self.db.get()
                .execute(
                    "SELECT value FROM kv WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)", (key, time.time())
                )
                .fetchone()
            )
        return None if row is None else bytes(row[0])

    def set_value(self, key: str, value: bytes, ttl: float | None = None) -> None:
        expires = None if ttl is None else time.time() + ttl
        with self.db.write() as conn:
            conn.execute("INSERT OR REPLACE INTO kv (key, value, expires_at) VALUES (?, ?, ?)", (key, value, expires))

    def delete_value(self, key: str) -> None:
        with self.db.write() as conn:
            conn.execute("DELETE FROM kv WHERE key = ?", (key,))

    def append_events(self, batch: bytes, ttl: float) -> None:
        now = time.time()
        with self.db.write() as conn:
            seq = conn.execute("INSERT INTO events (at, batch) VALUES (?, ?)", (now, batch)).lastrowid or 0
            conn.execute("DELETE FROM events WHERE seq <= ? OR at < ?", (seq - MAX_BATCHES, now - ttl))

    def read_events(self, after: str | None, limit: int) -> list[tuple[str, bytes]]:
        with self.db.errors():
            rows = (
                self.db.get()
                .execute("SELECT seq, batch FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (int(after or 0), limit))
                .fetchall()
            )
        return [(str(seq), bytes(batch)) for seq, batch in rows]

    def newest_events(self, limit: int) -> list[tuple[str, bytes]]:
        with self.db.errors():
            rows = self.db.get().execute("SELECT seq, batch FROM events ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
        return [(str(seq), bytes(batch)) for seq, batch in reversed(rows)]

    def last_event_cursor(self) -> str | None:
        with self.db.errors():
            row = self.db.get().execute("SELECT MAX(seq) FROM events").fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def close(self) -> None:
        self.db.close()
