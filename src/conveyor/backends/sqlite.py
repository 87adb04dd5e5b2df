"""SQLiteResultBackend: results in the ``results`` table of the same file as the SQLite broker.

``wait()`` and ``async_wait()`` do not poll: a waiter registers in this process's
:class:`~conveyor.backends.base.Wakers`, and a process that commits final results sends their ids to
every waiting process of the file over a Unix datagram socket (``brokers/sqlite/wake.py``), after the
commit. A waiter re-reads every :attr:`SQLiteResultBackend.recheck` seconds only as a safety net for
a wake that could not be delivered. Coroutines read the row in a thread (the loop never waits on the
file) and wait on a future of their loop. Expired rows are invisible at once and deleted by an
occasional sweep.

Leases, claims, values, gathers and token buckets (the coordination primitives) are rows of
the ``leases``, ``claims``, ``kv``, ``gathers`` and ``buckets`` tables, each operation one
``BEGIN IMMEDIATE`` transaction, so processes on the machine serialize on the write lock and a
check-then-write can never interleave with another.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Mapping, Sequence

from conveyor.backends.base import MAX_BATCHES, Reading, ResultBackend, Wakers, await_woken, wait_woken
from conveyor.brokers.sqlite.connection import SQLiteConnection
from conveyor.brokers.sqlite.wake import WakeChannel
from conveyor.states import FINAL_STATES, State

#: Seconds between sweeps of expired results (per process).
SWEEP_EVERY = 60.0
_FINAL = tuple(str(s) for s in FINAL_STATES)
#: Insert or replace a record, except where the revocation rule (``backends.base.replaces``) refuses:
#: a live REVOKED row is replaced only by REVOKED, and REVOKED does not replace a live SUCCESS or FAILURE.
_UPSERT = (
    "INSERT INTO results (id, state, record, expires_at) VALUES (?1, ?2, ?3, ?4) ON CONFLICT (id) DO UPDATE "
    "SET state = excluded.state, record = excluded.record, expires_at = excluded.expires_at "
    "WHERE results.expires_at <= ?5 OR NOT ("
    "(results.state = 'REVOKED' AND excluded.state != 'REVOKED') "
    "OR (excluded.state = 'REVOKED' AND results.state IN ('SUCCESS', 'FAILURE')))"
)


class SQLiteResultBackend(ResultBackend):
    """Results in a SQLite file; ``sqlite:///path`` URLs (the broker's file by default)."""

    #: Seconds between a waiter's safety re-reads (a wake normally arrives the moment the result is committed).
    recheck: float = 1.0

    def __init__(self, url: str) -> None:
        self.db = SQLiteConnection(url)
        self._next_sweep = time.monotonic() + SWEEP_EVERY
        self.wakers = Wakers()
        self._channel = WakeChannel(self.db.path, self.wakers.wake)

    def set(self, task_id: str, state: State, record: bytes, ttl: float) -> None:
        self.set_many([(task_id, state, record)], ttl)

    def try_set(self, task_id: str, state: State, record: bytes, ttl: float) -> bool:
        return self._write([(task_id, state, record)], ttl) == 1

    def set_many(self, items: Sequence[tuple[str, State, bytes]], ttl: float) -> None:
        self._write(items, ttl)

    def _write(self, items: Sequence[tuple[str, State, bytes]], ttl: float) -> int:
        """Upsert the records under the revocation rule (ResultBackend.set); return how many landed."""
        now = time.time()
        with self.db.write() as conn:
            before = conn.total_changes
            conn.executemany(
                _UPSERT, [(task_id, str(state), record, now + ttl, now) for task_id, state, record in items]
            )
            landed = conn.total_changes - before
            self._sweep(conn)
        final = [task_id for task_id, state, _ in items if state in FINAL_STATES]
        if final:  # committed: wake this process's waiters, then every other waiting process's
            self.wakers.wake(final)
            self._channel.notify(final)
        return landed

    def _sweep(self, conn: sqlite3.Connection) -> None:
        """Every SWEEP_EVERY seconds, delete expired results, claims and values (they are invisible already)."""
        if time.monotonic() < self._next_sweep:
            return
        self._next_sweep = time.monotonic() + SWEEP_EVERY
        now = time.time()
        conn.execute("DELETE FROM results WHERE expires_at <= ?", (now,))
        conn.execute("DELETE FROM claims WHERE expires_at <= ?", (now,))
        conn.execute("DELETE FROM kv WHERE expires_at <= ?", (now,))
        conn.execute("DELETE FROM gathers WHERE expires_at <= ?", (now,))
        conn.execute("DELETE FROM buckets WHERE expires_at <= ?", (now,))

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

    def get_many(self, task_ids: Sequence[str]) -> list[bytes | None]:
        found: dict[str, bytes] = {}
        now = time.time()
        with self.db.errors():
            conn = self.db.get()
            for first in range(0, len(task_ids), 500):  # below SQLite's limit on bound parameters
                chunk = list(task_ids[first : first + 500])
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(
                    f"SELECT id, record FROM results WHERE id IN ({marks}) AND expires_at > ?",
                    (*chunk, now),
                ).fetchall()
                found.update((row[0], bytes(row[1])) for row in rows)
        return [found.get(task_id) for task_id in task_ids]

    def _reading(self, task_id: str) -> Reading:
        row = self._read(task_id)
        return (False, None) if row is None else (row[0] in _FINAL, row[1])

    def wait(self, task_id: str, timeout: float) -> bytes | None:
        self._channel.listen()  # before the first read: a commit after it must find this process's socket
        return wait_woken(self.wakers, task_id, timeout, lambda: self._reading(task_id), self.recheck)

    async def async_wait(self, task_id: str, timeout: float) -> bytes | None:
        self._channel.listen()

        async def read() -> Reading:
            return await asyncio.to_thread(self._reading, task_id)

        return await await_woken(self.wakers, task_id, timeout, read, self.recheck)

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

    def gather(self, key: str, index: int, value: bytes, ttl: float) -> int:
        now = time.time()
        with self.db.write() as conn:
            conn.execute("DELETE FROM gathers WHERE key = ? AND expires_at <= ?", (key, now))
            conn.execute(
                "INSERT OR REPLACE INTO gathers (key, idx, value, expires_at) VALUES (?, ?, ?, ?)",
                (key, index, value, now + ttl),
            )
            conn.execute("UPDATE gathers SET expires_at = ? WHERE key = ?", (now + ttl, key))
            count: int = conn.execute("SELECT COUNT(*) FROM gathers WHERE key = ?", (key,)).fetchone()[0]
            self._sweep(conn)
        return count

    def gathered(self, key: str) -> dict[int, bytes]:
        with self.db.errors():
            rows = (
                self.db.get()
                .execute("SELECT idx, value FROM gathers WHERE key = ? AND expires_at > ?", (key, time.time()))
                .fetchall()
            )
        return {int(idx): bytes(value) for idx, value in rows}

    def delete_gather(self, key: str) -> None:
        with self.db.write() as conn:
            conn.execute("DELETE FROM gathers WHERE key = ?", (key,))

    def take_token(self, bucket: str, rate: float, burst: float) -> float:
        now = time.time()
        with self.db.write() as conn:
            row = conn.execute("SELECT tokens, updated_at FROM buckets WHERE name = ?", (bucket,)).fetchone()
            tokens = burst if row is None else min(burst, row[0] + max(0.0, now - row[1]) * rate)
            tokens -= 1.0
            # The row may go once the bucket would be full again: a missing row reads as a full bucket.
            conn.execute(
                "INSERT OR REPLACE INTO buckets (name, tokens, updated_at, expires_at) VALUES (?, ?, ?, ?)",
                (bucket, tokens, now, now + (burst - tokens) / rate),
            )
        return 0.0 if tokens >= 0.0 else -tokens / rate

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

    def add_counts(self, key: str, counts: Mapping[str, float]) -> None:
        if not counts:
            return
        with self.db.write() as conn:
            conn.executemany(
                "INSERT INTO counters (key, name, value) VALUES (?, ?, ?) "
                "ON CONFLICT (key, name) DO UPDATE SET value = value + excluded.value",
                [(key, name, value) for name, value in counts.items()],
            )

    def counts(self, key: str) -> dict[str, float]:
        with self.db.errors():
            rows = self.db.get().execute("SELECT name, value FROM counters WHERE key = ?", (key,)).fetchall()
        return {name: float(value) for name, value in rows}

    def last_event_cursor(self) -> str | None:
        with self.db.errors():
            row = self.db.get().execute("SELECT MAX(seq) FROM events").fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def close(self) -> None:
        self._channel.close()
        self.db.close()
