"""SQLiteBroker: the embedded default. No server; many processes on one machine share one file.

Every operation is one transaction on the ``messages`` table (``schema.sql`` documents
the states and indexes). ``reserve`` first promotes due scheduled messages and recovers expired
leases, then takes the next rows with one ``UPDATE ... RETURNING``. An idle ``reserve`` polls
with a read-only query, sleeping 1 ms growing to 50 ms, so it takes the write lock only when
there is work. See ``connection.py`` for WAL, locking and durability.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

from conveyor.brokers._stalls import IDLE_STAMP, STALL_GAP, STAMP_EVERY
from conveyor.brokers.base import REQUEUES_PER_DELIVERY, Broker, DeadLetter, Delivery, Envelope, QueueStats, WorkerInfo
from conveyor.brokers.sqlite.connection import SQLiteConnection
from conveyor.errors import DuplicateTaskId

if TYPE_CHECKING:
    from conveyor.backends.base import ResultBackend

READY, SCHEDULED, IN_FLIGHT, DEAD = 0, 1, 2, 3
#: Idle polling: first and longest sleep between looks at an empty queue, in seconds.
POLL_MIN, POLL_MAX = 0.001, 0.05

_INSERT = "INSERT INTO messages (id, queue, priority, state, eta, body, key) VALUES (?, ?, ?, ?, ?, ?, ?)"
_TAKE = (
    "UPDATE messages SET state = 2, owner = ?, token = ?, lease_until = ?, deliveries = deliveries + 1, started = 0 "
    "WHERE seq IN (SELECT seq FROM messages WHERE state = 0 AND queue = ? ORDER BY priority DESC, seq LIMIT ?) "
    "RETURNING id, body, priority, deliveries, seq"
)
_PROMOTE = "UPDATE messages SET state = 0, eta = NULL WHERE state = 1 AND eta <= ?"
# Expired leases (Broker.recover): a message a heartbeat marked started counts its delivery; the others
# go back uncounted (deliveries - 1 undoes the reserve's count) and count an uncounted requeue instead.
_BURY_EXPIRED = (
    "UPDATE messages SET state = 3, dead_at = ?1, owner = NULL, token = NULL, key = NULL, reason = 'delivered ' || "
    "deliveries || ' times without an acknowledgement (its lease expired without a heartbeat); poison?' "
    "WHERE state = 2 AND lease_until <= ?1 AND started = 1 AND deliveries >= ?2"
)
_BURY_UNSTARTED = (
    "UPDATE messages SET state = 3, dead_at = ?1, owner = NULL, token = NULL, key = NULL, deliveries = deliveries - 1, "
    "requeues = requeues + 1, reason = 'its lease expired ' || (requeues + 1) || ' times before it was seen running; "
    "poison?' WHERE state = 2 AND lease_until <= ?1 AND started = 0 AND requeues + 1 >= ?2"
)
_RETURN_UNSTARTED = (
    "UPDATE messages SET state = 0, owner = NULL, token = NULL, deliveries = deliveries - 1, requeues = requeues + 1 "
    "WHERE state = 2 AND lease_until <= ? AND started = 0"
)
_REQUEUE_EXPIRED = "UPDATE messages SET state = 0, owner = NULL, token = NULL WHERE state = 2 AND lease_until <= ?"
_ANY_WORK = (
    "SELECT EXISTS (SELECT 1 FROM messages WHERE state = 1 AND eta <= ?1) "
    "OR EXISTS (SELECT 1 FROM messages WHERE state = 2 AND lease_until <= ?1)"
)
_HELD = "id = ? AND token = ? AND state = 2"
# Broker stalls (_stalls.py): the clock row, and the leases a stall gives their term back to.
_SEEN = "SELECT seen FROM clock WHERE id = 1"
_IDLE_LOOK = "SELECT (SELECT seen FROM clock WHERE id = 1), EXISTS (SELECT 1 FROM messages WHERE state = 2)"
_STAMP = "INSERT INTO clock (id, seen) VALUES (1, ?1) ON CONFLICT (id) DO UPDATE SET seen = ?1"
_GIVE_BACK = "UPDATE messages SET lease_until = lease_until + ?1 WHERE state = 2 AND lease_until > ?2"


class SQLiteBroker(Broker):
    """A broker in a SQLite file; ``sqlite:///relative.db`` or ``sqlite:////absolute.db`` (``?synchronous=full`` fsyncs
    every commit). ``store`` is not used: the file keeps every state the broker needs."""

    def __init__(self, url: str, *, max_deliveries: int = 5, store: ResultBackend | None = None) -> None:
        super().__init__(url, max_deliveries=max_deliveries)
        self.url = url
        self.db = SQLiteConnection(url)

    def __repr__(self) -> str:
        return f"SQLiteBroker({str(self.db.path)!r})"

    # -- messages ---------------------------------------------------------------------------

    def enqueue(self, envelopes: Sequence[Envelope]) -> list[str]:
        stored: list[str] = []
        try:
            return self._insert(envelopes, stored)
        except sqlite3.IntegrityError as exc:  # write() rolled the whole batch back
            if "messages.id" not in str(exc):
                raise
            raise DuplicateTaskId(self._first_held(stored)) from None

    def _insert(self, envelopes: Sequence[Envelope], stored: list[str]) -> list[str]:
        """Insert the batch in one transaction; ``stored`` gets the ids of the rows it inserts (not folded by key)."""
        now = time.time()
        ids: list[str] = []
        with self.db.write() as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO queues (name) VALUES (?)", [(q,) for q in {e.queue for e in envelopes}]
            )
            rows = []
            batch_keys: dict[str, str] = {}  # a key used twice in one batch: the first envelope wins
            for env in envelopes:
                if env.key is not None:
                    found = batch_keys.get(env.key) or self._keyed(conn, env.key)
                    if found is not None:
                        ids.append(found)
                        continue
                    batch_keys[env.key] = env.id
                scheduled = env.eta is not None and env.eta > now
                rows.append(
                    (
                        env.id,
                        env.queue,
                        env.priority,
                        SCHEDULED if scheduled else READY,
                        env.eta if scheduled else None,
                        env.body,
                        env.key,
                    )
                )
                ids.append(env.id)
                stored.append(env.id)
            conn.executemany(_INSERT, rows)  # the UNIQUE id refuses a held or repeated id: see enqueue
        return ids

    def _first_held(self, ids: Sequence[str]) -> str:
        """The first of ``ids`` that the broker holds or the batch repeats (for the DuplicateTaskId message).

        Looked up after the rollback, on the error path only, so the hot path pays nothing for it.
        """
        query = "SELECT id FROM messages WHERE id IN (SELECT value FROM json_each(?))"
        held = {row[0] for row in self.db.get().execute(query, (json.dumps(list(ids)),))}
        seen: set[str] = set()
        for message_id in ids:
            if message_id in held or message_id in seen:
                return message_id
            seen.add(message_id)
        return ids[0]  # gone since the rollback; still the batch that was refused

    @staticmethod
    def _keyed(conn: sqlite3.Connection, key: str) -> str | None:
        """The id of the pending or running message holding idempotency ``key``, if any."""
        row = conn.execute("SELECT id FROM messages WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def reserve(
        self, queues: Sequence[str], n: int, *, owner: str, lease: float, timeout: float = 0.0
    ) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        pause = POLL_MIN
        while True:
            if self._work_waiting(queues):
                taken = self._take(queues, n, owner, lease)
                if taken:
                    return taken
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.waits_stopped:
                return []
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, POLL_MAX)

    def ack_and_reserve(
        self,
        acks: Sequence[Delivery],
        queues: Sequence[str],
        n: int,
        *,
        owner: str,
        lease: float,
        timeout: float = 0.0,
    ) -> list[Delivery]:
        if not acks:
            return self.reserve(queues, n, owner=owner, lease=lease, timeout=timeout)
        deadline = time.monotonic() + timeout
        taken = self._take(queues, n, owner, lease, acks)  # one transaction: the acks, then the reservation
        if taken or timeout <= 0:
            return taken
        return self.reserve(queues, n, owner=owner, lease=lease, timeout=max(0.0, deadline - time.monotonic()))

    def _work_waiting(self, queues: Sequence[str]) -> bool:
        """A read-only look: is anything ready, due or expired? (No write lock while idle.)"""
        conn = self.db.get()
        marks = ",".join("?" * len(queues))
        with self.db.errors():
            ready = conn.execute(
                f"SELECT EXISTS (SELECT 1 FROM messages WHERE state = 0 AND queue IN ({marks}))", tuple(queues)
            ).fetchone()[0]
            now = time.time()
            return bool(ready) or bool(conn.execute(_ANY_WORK, (now,)).fetchone()[0]) or self._stamp_due(conn, now)

    @staticmethod
    def _stamp_due(conn: sqlite3.Connection, now: float) -> bool:
        """True when leases are in flight and ``seen`` is older than IDLE_STAMP: the poll then writes it.

        Reads leave no trace, so without this a broker served only by idle workers (and the
        supervisor's recover every 2 s) would look stalled, and a dead worker's lease would never expire.
        """
        seen, in_flight = conn.execute(_IDLE_LOOK).fetchone()
        return bool(in_flight) and (seen is None or not 0 <= now - seen <= IDLE_STAMP)

    def _take(
        self, queues: Sequence[str], n: int, owner: str, lease: float, acks: Sequence[Delivery] = ()
    ) -> list[Delivery]:
        token = uuid.uuid4().hex
        out: list[Delivery] = []
        with self.db.write() as conn:
            if acks:
                self._delete_held(conn, acks)
            now = time.time()
            self._recover(conn, now)
            for queue in queues:
                if len(out) >= n:
                    break
                rows = conn.execute(_TAKE, (owner, token, now + lease, queue, n - len(out))).fetchall()
                rows.sort(key=lambda r: (-r[2], r[4]))  # RETURNING has no order: priority, then FIFO
                out += [Delivery(r[0], queue, r[1], r[2], r[3], token, owner) for r in rows]
        return out

    def _recover(self, conn: sqlite3.Connection, now: float) -> int:
        self._catch_up(conn, now)
        moved: int = conn.execute(_PROMOTE, (now,)).rowcount
        moved += conn.execute(_BURY_EXPIRED, (now, self.max_deliveries)).rowcount
        moved += conn.execute(_BURY_UNSTARTED, (now, REQUEUES_PER_DELIVERY * self.max_deliveries)).rowcount
        moved += conn.execute(_RETURN_UNSTARTED, (now,)).rowcount
        moved += conn.execute(_REQUEUE_EXPIRED, (now,)).rowcount
        return moved

    @staticmethod
    def _catch_up(conn: sqlite3.Connection, now: float) -> None:
        """Give running leases back the term a broker stall took from them, then note that the broker serves.

        Runs inside the write transaction of a reserve, recover or extend, before any lease deadline
        is looked at (see ``_stalls.py``). A clock stepped back is stamped at once.
        """
        row = conn.execute(_SEEN).fetchone()
        if row is None:
            conn.execute(_STAMP, (now,))
            return
        gap = now - row[0]
        if gap > STALL_GAP:
            conn.execute(_GIVE_BACK, (gap, row[0]))
        if gap > STAMP_EVERY or gap < 0:
            conn.execute(_STAMP, (now,))

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        with self.db.write() as conn:
            self._delete_held(conn, deliveries)

    @staticmethod
    def _delete_held(conn: sqlite3.Connection, deliveries: Sequence[Delivery]) -> None:
        """Delete acknowledged messages whose lease is still held (an older token is ignored)."""
        conn.executemany(f"DELETE FROM messages WHERE {_HELD}", [(d.id, d.token) for d in deliveries])

    def nack(self, delivery: Delivery, *, delay: float = 0.0, body: bytes | None = None) -> None:
        state, eta = (SCHEDULED, time.time() + delay) if delay > 0 else (READY, None)
        with self.db.write() as conn:
            conn.execute(
                "UPDATE messages SET state = ?, eta = ?, body = COALESCE(?, body), deliveries = deliveries - 1, "
                f"owner = NULL, token = NULL WHERE {_HELD}",
                (state, eta, body, delivery.id, delivery.token),
            )

    def extend(self, deliveries: Sequence[Delivery], lease: float, running: Collection[str] = ()) -> list[str]:
        lost: list[str] = []
        sql = f"UPDATE messages SET lease_until = ?, started = MAX(started, ?) WHERE {_HELD}"
        with self.db.write() as conn:
            now = time.time()  # once the lock is held: a heartbeat that waited out a stall must not land stale
            self._catch_up(conn, now)
            until = now + lease
            for d in deliveries:
                if conn.execute(sql, (until, int(d.id in running), d.id, d.token)).rowcount == 0:
                    lost.append(d.id)
        return lost

    def dead_letter(self, delivery: Delivery, reason: str, body: bytes | None = None) -> None:
        with self.db.write() as conn:
            conn.execute(
                "UPDATE messages SET state = 3, reason = ?, dead_at = ?, body = COALESCE(?, body), owner = NULL, "
                f"token = NULL, key = NULL WHERE {_HELD}",
                (reason, time.time(), body, delivery.id, delivery.token),
            )

    def release_owner(self, owner: str, running: Collection[str] | None = None) -> int:
        why = f" times without an acknowledgement (its worker process {owner} died); poison?"
        # Only what was running counts a delivery; the rest goes back uncounted (like a nack).
        ids = None if running is None else list(running)
        only = "" if ids is None else f" AND id IN ({', '.join('?' * len(ids))})"
        with self.db.write() as conn:
            uncounted = 0
            if ids is not None:
                uncounted = conn.execute(
                    "UPDATE messages SET state = 0, owner = NULL, token = NULL, deliveries = deliveries - 1 "
                    f"WHERE state = 2 AND owner = ? AND id NOT IN ({', '.join('?' * len(ids))})",
                    (owner, *ids),
                ).rowcount
            buried = conn.execute(
                "UPDATE messages SET state = 3, dead_at = ?, owner = NULL, token = NULL, key = NULL, "
                f"reason = 'delivered ' || deliveries || ? WHERE state = 2 AND owner = ? AND deliveries >= ?{only}",
                (time.time(), why, owner, self.max_deliveries, *(ids or ())),
            ).rowcount
            returned = conn.execute(
                "UPDATE messages SET state = 0, owner = NULL, token = NULL WHERE state = 2 AND owner = ?", (owner,)
            ).rowcount
        return int(uncounted + buried + returned)

    def extend_owner(self, owner: str, lease: float) -> int:
        with self.db.write() as conn:
            extended = conn.execute(
                "UPDATE messages SET lease_until = ? WHERE state = 2 AND owner = ?", (time.time() + lease, owner)
            ).rowcount
        return int(extended)

    def recover(self) -> int:
        with self.db.write() as conn:
            return self._recover(conn, time.time())

    # -- inspection and dead letters --------------------------------------------------------

    def stats(self) -> list[QueueStats]:
        conn = self.db.get()
        with self.db.errors():
            counts = conn.execute("SELECT queue, state, COUNT(*) FROM messages GROUP BY queue, state").fetchall()
            names = [row[0] for row in conn.execute("SELECT name FROM queues")]
        per_queue: dict[str, list[int]] = {name: [0, 0, 0, 0] for name in names}
        for queue, state, count in counts:
            per_queue.setdefault(queue, [0, 0, 0, 0])[state] = count
        return [QueueStats(q, *c) for q, c in sorted(per_queue.items())]

    def dead_letters(self, limit: int = 100, queue: str | None = None) -> list[DeadLetter]:
        sql = "SELECT id, queue, body, reason, dead_at, deliveries FROM messages WHERE state = 3"
        params: tuple[object, ...] = ()
        if queue is not None:
            sql, params = sql + " AND queue = ?", (queue,)
        with self.db.errors():
            rows = self.db.get().execute(sql + " ORDER BY dead_at, seq LIMIT ?", (*params, limit)).fetchall()
        return [DeadLetter(*row) for row in rows]

    def requeue_dead(self, ids: Sequence[str] | None = None) -> int:
        sql = (
            "UPDATE messages SET state = 0, deliveries = 0, requeues = 0, reason = NULL, dead_at = NULL WHERE state = 3"
        )
        return self._for_dead(sql, ids)

    def purge_dead(self, ids: Sequence[str] | None = None) -> int:
        return self._for_dead("DELETE FROM messages WHERE state = 3", ids)

    def _for_dead(self, sql: str, ids: Sequence[str] | None) -> int:
        with self.db.write() as conn:
            if ids is None:
                return int(conn.execute(sql).rowcount)
            return sum(conn.execute(sql + " AND id = ?", (i,)).rowcount for i in ids)

    def cancel(self, ids: Sequence[str]) -> list[str]:
        with self.db.write() as conn:
            return [
                i for i in ids if conn.execute("DELETE FROM messages WHERE id = ? AND state IN (0, 1)", (i,)).rowcount
            ]

    def purge(self, queue: str) -> int:
        with self.db.write() as conn:
            return int(conn.execute("DELETE FROM messages WHERE queue = ? AND state IN (0, 1)", (queue,)).rowcount)

    # -- workers ----------------------------------------------------------------------------

    def register_worker(self, info: WorkerInfo, ttl: float) -> None:
        with self.db.write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO workers (id, info, expires_at) VALUES (?, ?, ?)",
                (info.id, json.dumps(info.to_dict()), time.time() + ttl),
            )

    def unregister_worker(self, worker_id: str) -> None:
        with self.db.write() as conn:
            conn.execute("DELETE FROM workers WHERE id = ?", (worker_id,))

    def workers(self) -> list[WorkerInfo]:
        with self.db.errors():
            rows = (
                self.db.get()
                .execute("SELECT info FROM workers WHERE expires_at > ? ORDER BY id", (time.time(),))
                .fetchall()
            )
        return [WorkerInfo.from_dict(json.loads(row[0])) for row in rows]

    def ping(self) -> None:
        with self.db.errors():
            self.db.get().execute("SELECT 1").fetchone()

    def close(self) -> None:
        self.db.close()
