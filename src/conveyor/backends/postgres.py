"""PostgresResultBackend: results in the ``results`` table of a migrated conveyor schema.

Usable with any broker (RabbitMQ + PostgreSQL, say), or beside the PostgreSQL broker in the same
schema. ``set``/``set_many`` is one call of ``cv_set_results``, which notifies each final state at
commit; ``wait()`` registers with the process's LISTEN connection (``brokers/postgres/listener.py``),
reads the record, and blocks on the notification: it wakes the moment the result lands, with no
polling. Expired rows are invisible at once and deleted by a sweep every minute.

A worker's batch of results (``set_many``) commits without waiting for the WAL flush when the broker
is PostgreSQL on the same server (the broker tells the backend so: :attr:`flush_results`); see
:meth:`PostgresResultBackend.set_many` for why a crash then only runs the task again. With another
broker (RabbitMQ, Redis) every result write waits for the flush, as the server's setting says.

Every write follows the revocation rule of :meth:`ResultBackend.set` in the same statement, so a
revocation and a finished run never replace each other whatever the interleaving; only records that
landed notify waiters. ``async_wait`` registers with the same listener and waits on a future of its
loop, which the listener thread resolves: a coroutine is woken as a thread is, and never blocks the loop.

Leases, claims, values, gathers and token buckets (the coordination primitives) are rows of ``leases``,
``claims``, ``kv``, ``gathers`` (with ``gather_slots``) and ``buckets``, each operation one statement
(``INSERT ... ON CONFLICT``, or one function call), atomic on the server, judged on its clock. Expired
rows of every table are deleted by the same sweep as results.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql

from conveyor.backends.base import MAX_BATCHES, ResultBackend
from conveyor.brokers.postgres.connection import PostgresConnection
from conveyor.states import FINAL_STATES, State

#: Seconds between sweeps of expired results, claims and values (per process).
SWEEP_EVERY = 60.0
#: Longest single block of wait() in seconds before it reads again (a safety net; notifications wake it).
WAIT_SLICE = 5.0
_FINAL = [str(s) for s in FINAL_STATES]
#: :meth:`PostgresResultBackend.set_held`: the records whose message is still in flight under the writer's
#: token (an empty token: unfenced) are written, the others' ids returned; row locks held to the commit.
_HELD_WRITE = """
WITH w AS (
    SELECT * FROM unnest(%(ids)s::text[], %(states)s::text[], %(records)s::bytea[], %(tokens)s::text[])
        WITH ORDINALITY AS w (id, state, record, token, n)
), held AS (
    SELECT w.n FROM w JOIN {s}.messages m ON m.id = w.id AND m.token = w.token AND m.state = 2 FOR SHARE OF m
), ok AS (
    SELECT w.* FROM w WHERE w.token = '' OR w.n IN (SELECT n FROM held)
)
SELECT ARRAY(SELECT id FROM w WHERE n NOT IN (SELECT n FROM ok) ORDER BY n),
       {s}.cv_set_results(ARRAY(SELECT id FROM ok ORDER BY n), ARRAY(SELECT state FROM ok ORDER BY n),
                          ARRAY(SELECT record FROM ok ORDER BY n), %(ttl)s, %(final)s)"""


class PostgresResultBackend(ResultBackend):
    """Results in PostgreSQL; ``postgresql://`` URLs with an optional ``schema=`` (default ``conveyor``)."""

    def __init__(self, url: str) -> None:
        self.db = PostgresConnection(url)
        self._s = self.db.ident
        self._next_sweep = time.monotonic() + SWEEP_EVERY
        #: Whether ``set_many`` waits for the WAL flush; the PostgreSQL broker on the same server clears it.
        self.flush_results = True
        #: Whether :meth:`set_held` checks each lease in its write (the PostgreSQL broker in this schema said so).
        self.fenced = False

    def __repr__(self) -> str:
        return f"PostgresResultBackend({self.db.url!r})"

    def location(self) -> str:
        """The libpq URL of its database, with its schema as the fragment (``postgresql://...#conveyor``)."""
        return f"{self.db.conninfo}#{self.db.schema}"

    def beside_acks(self) -> None:
        """The PostgreSQL broker on the same server acks after these writes: result batches skip the flush."""
        self.flush_results = False

    def _q(self, text: str) -> sql.Composed:
        return sql.SQL(text).format(s=self._s)

    def migrate(self) -> list[str]:
        return self.db.migrate()

    def set(self, task_id: str, state: State, record: bytes, ttl: float) -> None:
        self._write([(task_id, state, record)], ttl, flush=True)

    def try_set(self, task_id: str, state: State, record: bytes, ttl: float) -> bool:
        return self._write([(task_id, state, record)], ttl, flush=True) == 1

    def set_many(self, items: Sequence[tuple[str, State, bytes]], ttl: float) -> None:
        """Write a worker's finished batch; without waiting for the WAL flush when :attr:`flush_results` is off.

        The broker clears :attr:`flush_results` only when it is PostgreSQL on the same server, so the
        batch's acks are committed after these results, in the same write-ahead log. A server crash that
        forgets the results (the last fraction of a second of commits) then forgets the acks too: the
        tasks are leased again and run again, which at-least-once allows, and write their results again.
        Any later synchronous commit on the server (an enqueue, say) flushes them with it. The waiter is
        woken at commit, a WAL flush sooner: the round trip of a task waits for one flush (its enqueue).
        """
        self._write(items, ttl, flush=self.flush_results)

    def beside_leases(self) -> None:
        """The PostgreSQL broker in this schema: :meth:`set_held` checks each message row's lease token."""
        self.fenced = True

    def set_held(
        self, items: Sequence[tuple[str, State, bytes]], ttl: float, leases: Sequence[tuple[str, str]]
    ) -> list[str]:
        """One statement: lock the rows of the messages still leased under the writers' tokens, then
        ``cv_set_results`` on those records alone, so a write that waited in a cut link is refused if the
        message was redelivered (or acked) meanwhile.

        ``FOR SHARE`` makes the check and the write one step: a reserve that hands the message to another
        run waits for this commit, and one that committed first leaves a new token that fails the match.
        """
        if not self.fenced or not items:
            self.set_many(items, ttl)
            return []
        return self._held_write(items, ttl, leases, flush=self.flush_results)[0]

    def try_set_held(
        self, task_id: str, state: State, record: bytes, ttl: float, lease: tuple[str, str]
    ) -> bool | None:
        if not self.fenced:
            return self.try_set(task_id, state, record, ttl)
        refused, landed = self._held_write([(task_id, state, record)], ttl, [lease], flush=True)
        return None if refused else landed == 1

    def _held_write(
        self, items: Sequence[tuple[str, State, bytes]], ttl: float, leases: Sequence[tuple[str, str]], *, flush: bool
    ) -> tuple[list[str], int]:
        """The fenced upsert (:data:`_HELD_WRITE`): the ids refused for their lease, and how many records landed."""
        call = _HELD_WRITE + ("" if flush else ", set_config('synchronous_commit', 'off', true)")
        with self.db.connection() as conn:
            row = conn.execute(
                self._q(call),
                {
                    "ids": [i[0] for i in items],
                    "states": [str(i[1]) for i in items],
                    "records": [i[2] for i in items],
                    "tokens": [token for _, token in leases],
                    "ttl": ttl,
                    "final": _FINAL,
                },
            ).fetchone()
            self._sweep(conn)
        return ([], 0) if row is None else (list(row[0]), int(row[1]))

    def _write(self, items: Sequence[tuple[str, State, bytes]], ttl: float, *, flush: bool) -> int:
        """Upsert the records under the revocation rule (one ``cv_set_results`` call); return how many landed.

        ``flush=False``: the commit does not wait for the WAL flush (``synchronous_commit`` off for this
        transaction only, set in the same statement).
        """
        if not items:
            return 0
        call = "SELECT {s}.cv_set_results(%s, %s, %s::bytea[], %s, %s)"
        if not flush:  # read at commit, which ends this one-statement transaction (autocommit)
            call += ", set_config('synchronous_commit', 'off', true)"
        with self.db.connection() as conn:
            row = conn.execute(
                self._q(call),
                ([i[0] for i in items], [str(i[1]) for i in items], [i[2] for i in items], ttl, _FINAL),
            ).fetchone()
            self._sweep(conn)
        return 0 if row is None else int(row[0])

    def _sweep(self, conn: psycopg.Connection[Any]) -> None:
        """Every SWEEP_EVERY seconds, delete expired results, claims and values (they are invisible already)."""
        if time.monotonic() < self._next_sweep:
            return
        self._next_sweep = time.monotonic() + SWEEP_EVERY
        for table in ("results", "claims", "kv", "gathers", "buckets"):  # a gather's slots go with it (cascade)
            conn.execute(
                sql.SQL("DELETE FROM {s}.{t} WHERE expires_at <= {s}.cv_now()").format(
                    s=self._s, t=sql.Identifier(table)
                )
            )

    def _read(self, task_id: str) -> tuple[str, bytes] | None:
        with self.db.connection() as conn:
            row = conn.execute(
                self._q("SELECT state, record FROM {s}.results WHERE id = %s AND expires_at > {s}.cv_now()"),
                (task_id,),
            ).fetchone()
        return None if row is None else (row[0], bytes(row[1]))

    def get(self, task_id: str) -> bytes | None:
        row = self._read(task_id)
        return None if row is None else row[1]

    def get_many(self, task_ids: Sequence[str]) -> list[bytes | None]:
        if not task_ids:
            return []
        with self.db.connection() as conn:
            rows = conn.execute(
                self._q("SELECT id, record FROM {s}.results WHERE id = ANY(%s) AND expires_at > {s}.cv_now()"),
                (list(task_ids),),
            ).fetchall()
        found = {row[0]: bytes(row[1]) for row in rows}
        return [found.get(task_id) for task_id in task_ids]

    def wait(self, task_id: str, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        listener = self.db.listener()
        listener.wait_listening(min(timeout, 2.0))
        waiter = listener.watch(task_id)
        try:
            while True:
                waiter.event.clear()
                row = self._read(task_id)
                remaining = deadline - time.monotonic()
                if (row is not None and row[0] in _FINAL) or remaining <= 0:
                    return None if row is None else row[1]
                # Not listening (the server restarting): look again soon rather than trust a wake-up.
                woken = waiter.event.wait(min(remaining, WAIT_SLICE if listener.listening else 0.1))
                if woken and waiter.record is not None:
                    return waiter.record  # the final record came with the notification: no query
        finally:
            listener.unwatch(task_id, waiter)

    async def async_wait(self, task_id: str, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        listener = self.db.listener()
        if not listener.listening:  # just started: a thread waits for it, not the loop
            await asyncio.to_thread(listener.wait_listening, min(timeout, 2.0))
        loop = asyncio.get_running_loop()
        while True:
            woken: asyncio.Future[None] = loop.create_future()
            waiter = listener.watch(task_id, woken)  # before the read: a result landing after it wakes us
            try:
                row = await asyncio.to_thread(self._read, task_id)
                remaining = deadline - time.monotonic()
                if (row is not None and row[0] in _FINAL) or remaining <= 0:
                    return None if row is None else row[1]
                await asyncio.wait([woken], timeout=min(remaining, WAIT_SLICE if listener.listening else 0.1))
                if woken.done() and waiter.record is not None:
                    return waiter.record  # the final record came with the notification: no query
            finally:
                listener.unwatch(task_id, waiter)
                woken.cancel()

    def forget(self, task_id: str) -> None:
        with self.db.connection() as conn:
            conn.execute(self._q("DELETE FROM {s}.results WHERE id = %s"), (task_id,))

    def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        with self.db.connection() as conn:
            # Take a free or expired lease, or renew our own; a live lease of another owner is left alone.
            row = conn.execute(
                self._q(
                    "INSERT INTO {s}.leases AS l (name, owner, expires_at) VALUES (%s, %s, {s}.cv_now() + %s) "
                    "ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at "
                    "WHERE l.owner = excluded.owner OR l.expires_at <= {s}.cv_now() RETURNING owner"
                ),
                (name, owner, ttl),
            ).fetchone()
        return row is not None and row[0] == owner

    def lease_holder(self, name: str) -> str | None:
        with self.db.connection() as conn:
            row = conn.execute(
                self._q("SELECT owner FROM {s}.leases WHERE name = %s AND expires_at > {s}.cv_now()"), (name,)
            ).fetchone()
        return None if row is None else str(row[0])

    def release_lease(self, name: str, owner: str) -> None:
        with self.db.connection() as conn:
            conn.execute(self._q("DELETE FROM {s}.leases WHERE name = %s AND owner = %s"), (name, owner))

    def claim(self, key: str, ttl: float) -> bool:
        with self.db.connection() as conn:
            row = conn.execute(
                self._q(
                    "INSERT INTO {s}.claims AS c (key, expires_at) VALUES (%s, {s}.cv_now() + %s) "
                    "ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at "
                    "WHERE c.expires_at <= {s}.cv_now() RETURNING 1"
                ),
                (key, ttl),
            ).fetchone()
            self._sweep(conn)
        return row is not None

    def unclaim(self, key: str) -> None:
        with self.db.connection() as conn:
            conn.execute(self._q("DELETE FROM {s}.claims WHERE key = %s"), (key,))

    def get_value(self, key: str) -> bytes | None:
        with self.db.connection() as conn:
            row = conn.execute(
                self._q(
                    "SELECT value FROM {s}.kv WHERE key = %s AND (expires_at IS NULL OR expires_at > {s}.cv_now())"
                ),
                (key,),
            ).fetchone()
        return None if row is None else bytes(row[0])

    def set_value(self, key: str, value: bytes, ttl: float | None = None) -> None:
        with self.db.connection() as conn:
            conn.execute(
                self._q(
                    "INSERT INTO {s}.kv (key, value, expires_at) VALUES (%s, %s, {s}.cv_now() + %s) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at"
                ),
                (key, value, ttl),
            )

    def delete_value(self, key: str) -> None:
        with self.db.connection() as conn:
            conn.execute(self._q("DELETE FROM {s}.kv WHERE key = %s"), (key,))

    def signal_workers(self) -> None:
        """Notify the schema's work channel: idle workers of a PostgreSQL broker in this schema wake and read
        their pause flags again (they send no query while nothing wakes them)."""
        with self.db.connection() as conn:
            conn.execute("SELECT pg_notify(%s, '')", (f"cv:{self.db.schema}",))

    def gather(self, key: str, index: int, value: bytes, ttl: float) -> int:
        with self.db.connection() as conn:
            row = conn.execute(self._q("SELECT {s}.cv_gather(%s, %s, %s, %s)"), (key, index, value, ttl)).fetchone()
            self._sweep(conn)
        assert row is not None
        return int(row[0])

    def gathered(self, key: str) -> dict[int, bytes]:
        with self.db.connection() as conn:
            rows = conn.execute(
                self._q(
                    "SELECT s.idx, s.value FROM {s}.gathers g JOIN {s}.gather_slots s ON s.key = g.key "
                    "WHERE g.key = %s AND g.expires_at > {s}.cv_now()"
                ),
                (key,),
            ).fetchall()
        return {int(idx): bytes(value) for idx, value in rows}

    def delete_gather(self, key: str) -> None:
        with self.db.connection() as conn:
            conn.execute(self._q("DELETE FROM {s}.gathers WHERE key = %s"), (key,))

    def take_token(self, bucket: str, rate: float, burst: float) -> float:
        with self.db.connection() as conn:
            row = conn.execute(self._q("SELECT {s}.cv_take_token(%s, %s, %s)"), (bucket, rate, burst)).fetchone()
        assert row is not None
        return float(row[0])

    def append_events(self, batch: bytes, ttl: float) -> None:
        """Append a batch and trim the log, in one statement (one round trip, as a worker publishes every
        half second and its idle heartbeat every two). Its commit does not wait for the WAL flush: the log
        is for watching, and a server crash forgets at most its last fraction of a second."""
        with self.db.connection() as conn:
            conn.execute(
                self._q(
                    "WITH added AS (INSERT INTO {s}.events (at, batch) VALUES ({s}.cv_now(), %s) RETURNING seq), "
                    "trimmed AS (DELETE FROM {s}.events WHERE seq <= (SELECT seq FROM added) - %s "
                    "OR at < {s}.cv_now() - %s RETURNING 1) "
                    "SELECT set_config('synchronous_commit', 'off', true)"
                ),
                (batch, MAX_BATCHES, ttl),
            )

    def add_counts(self, key: str, counts: Mapping[str, float]) -> None:
        if not counts:
            return
        names = sorted(counts)  # one order for every writer: concurrent upserts cannot deadlock
        with self.db.connection() as conn:
            conn.execute(
                self._q(
                    "INSERT INTO {s}.counters (key, name, value) SELECT %s, n, v FROM unnest(%s::text[], %s::float8[]) "
                    "AS u(n, v) ON CONFLICT (key, name) DO UPDATE SET value = {s}.counters.value + excluded.value"
                ),
                (key, names, [float(counts[n]) for n in names]),
            )

    def counts(self, key: str) -> dict[str, float]:
        with self.db.connection() as conn:
            rows = conn.execute(self._q("SELECT name, value FROM {s}.counters WHERE key = %s"), (key,)).fetchall()
        return {str(name): float(value) for name, value in rows}

    def read_events(self, after: str | None, limit: int) -> list[tuple[str, bytes]]:
        with self.db.connection() as conn:
            rows = conn.execute(
                self._q("SELECT seq, batch FROM {s}.events WHERE seq > %s ORDER BY seq LIMIT %s"),
                (int(after or 0), limit),
            ).fetchall()
        return [(str(seq), bytes(batch)) for seq, batch in rows]

    def newest_events(self, limit: int) -> list[tuple[str, bytes]]:
        with self.db.connection() as conn:
            rows = conn.execute(
                self._q("SELECT seq, batch FROM {s}.events ORDER BY seq DESC LIMIT %s"), (limit,)
            ).fetchall()
        return [(str(seq), bytes(batch)) for seq, batch in reversed(rows)]

    def last_event_cursor(self) -> str | None:
        with self.db.connection() as conn:
            row = conn.execute(self._q("SELECT max(seq) FROM {s}.events")).fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def close(self) -> None:
        self.db.close()
