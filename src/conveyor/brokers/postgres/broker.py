"""PostgresBroker: the broker contract on PostgreSQL (psycopg 3), for teams that run nothing else.

Every operation is one call of a server-side function (``migrations/0001_initial.sql``), so a
worker's steady state (ack the finished batch, recover, reserve the next one) is one round trip, like
the Lua scripts on Redis. ``reserve`` takes rows with ``SELECT ... FOR UPDATE SKIP LOCKED``: workers
never queue behind each other's row locks, and each takes a whole batch at once.

Idle workers do not poll. After a reserve that found nothing, the next reserve waits on the
process's LISTEN connection (``listener.py``) until a notification says a message became ready or
scheduled, or until the next scheduled message's eta; it sends no query at all while the generation of
notifications has not moved (only the supervisor's heartbeat, every 2 s, queries an idle worker's
database: it registers the worker and recovers expired leases).

Acked messages are deleted; see the migration for how autovacuum keeps up.

Transactional enqueue: :meth:`enqueue_in` writes messages with the caller's own psycopg connection,
inside the caller's transaction (commit: the task exists and wakes a worker; rollback: it never did).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

from conveyor.brokers._stalls import IDLE_WAKE, STALL_GAP, STAMP_EVERY
from conveyor.brokers.base import REQUEUES_PER_DELIVERY, Broker, DeadLetter, Delivery, Envelope, QueueStats, WorkerInfo
from conveyor.brokers.postgres.connection import PostgresConnection
from conveyor.errors import ConfigurationError, DuplicateTaskId

if TYPE_CHECKING:
    from conveyor.backends.base import ResultBackend

READY, SCHEDULED, IN_FLIGHT, DEAD = 0, 1, 2, 3
#: SQLSTATE cv_enqueue raises for an id the table holds already.
_HELD_ID = "CV001"
#: Seconds an idle reserve waits for its listener to connect before it looks at the queues anyway.
LISTEN_WAIT = 2.0


class PostgresBroker(Broker):
    """A broker in a PostgreSQL schema; ``postgresql://`` or ``postgres://`` URLs (see ``connection.py``).

    The schema must be migrated first (``conveyor db migrate APP``). The schema keeps every state the
    broker needs; ``store`` (the app's result backend), when it is PostgreSQL on the same server, is told
    that its worker result batches need not wait for the WAL flush (``Store.beside_acks``):
    the acks that follow them go to the same write-ahead log; in the same schema too, it is told that it
    sees the leases (``Store.beside_leases``): each worker result write then checks its message's lease
    token in the same statement.
    """

    def __init__(self, url: str, *, max_deliveries: int = 5, store: ResultBackend | None = None) -> None:
        super().__init__(url, max_deliveries=max_deliveries)
        self.db = PostgresConnection(url)
        self._s = self.db.ident
        # A PostgreSQL store says where it commits (Store.location: its libpq URL, the schema as fragment).
        place = store.location() if store is not None else None
        conninfo, _, schema = (place or "").partition("#")
        if store is not None and conninfo.startswith("postgresql:") and _same_server(conninfo, self.db.conninfo):
            store.beside_acks()
        # The store's signal_workers notifies this schema's channel (same database, same schema): then
        # wake_version tells a worker child when to read its pause flags again.
        self._store_signals = conninfo.startswith("postgresql:") and (conninfo, schema) == (
            self.db.conninfo,
            self.db.schema,
        )
        if store is not None and self._store_signals:  # its result writes can check this schema's leases
            store.beside_leases()
        # Per process: the listener generation of the last reserve that found nothing, when (monotonic)
        # the next scheduled message comes due or lease expires (None: none), whether leases were in
        # flight, and the count of acks before that reserve; an idle reserve skips its query while the
        # generation has not moved and that time has not come (with leases in flight it stamps the stall
        # clock instead, at most every IDLE_WAKE seconds, until the stamp finds none in flight).
        self._idle_since: tuple[int, float | None, bool, int] | None = None
        # Acks through ack() (the asyncio pool's) since this process started: an idle reserve that saw
        # leases in flight looks again after one, since the lease it saw may have been that one.
        self._acks = 0
        self._stamp_due = 0.0  # monotonic: no stamp before (an idle loop may come round twice a wait)

    def __repr__(self) -> str:
        return f"PostgresBroker({self.db.url!r})"

    def _q(self, text: str) -> sql.Composed:
        """``text`` with ``{s}`` replaced by the schema's quoted name."""
        return sql.SQL(text).format(s=self._s)

    # -- messages ---------------------------------------------------------------------------

    def enqueue(self, envelopes: Sequence[Envelope]) -> list[str]:
        if not envelopes:
            return []
        with self.db.connection() as conn:
            return self._enqueue(conn, envelopes)

    def enqueue_in(self, connection: object, envelopes: Sequence[Envelope]) -> list[str]:
        """Enqueue with the caller's psycopg connection, inside its open transaction (never committed here).

        The messages are written with ``cv_enqueue`` on that connection; its NOTIFY is delivered at the
        caller's commit, so idle workers wake then, and never for a rollback.

        Raises:
            ConfigurationError: ``connection`` is no psycopg (3) connection nor a SQLAlchemy session or
                connection over one.
        """
        conn = _driver_connection(connection)
        if not envelopes:
            return []
        return self._enqueue(conn, envelopes)

    async def aenqueue_in(self, connection: object, envelopes: Sequence[Envelope]) -> list[str]:
        """:meth:`enqueue_in` with the caller's psycopg ``AsyncConnection``, inside its open transaction.

        Raises:
            ConfigurationError: ``connection`` is no psycopg (3) AsyncConnection.
        """
        if not isinstance(connection, psycopg.AsyncConnection):
            raise ConfigurationError(
                f"aapply_async(connection=) takes a psycopg 3 AsyncConnection (apply_async takes a sync one), "
                f"got {type(connection).__name__}"
            )
        if not envelopes:
            return []
        query, params = self._enqueue_call(envelopes)
        try:
            cursor = await connection.cursor(row_factory=tuple_row).execute(query, params)
            row = await cursor.fetchone()
        except psycopg.Error as exc:
            raise _duplicate(exc, envelopes) from None
        assert row is not None
        return list(row[0])

    def _enqueue(self, conn: psycopg.Connection[Any], envelopes: Sequence[Envelope]) -> list[str]:
        query, params = self._enqueue_call(envelopes)
        try:
            row = conn.cursor(row_factory=tuple_row).execute(query, params).fetchone()
        except psycopg.Error as exc:
            raise _duplicate(exc, envelopes) from None
        assert row is not None
        return list(row[0])

    def _enqueue_call(self, envelopes: Sequence[Envelope]) -> tuple[sql.Composed, tuple[list[Any], ...]]:
        """The ``cv_enqueue`` call storing ``envelopes``, after refusing an id repeated within the batch.

        Raises:
            DuplicateTaskId: an id twice in the batch.
        """
        seen: set[str] = set()
        for env in envelopes:
            if env.id in seen:
                raise DuplicateTaskId(env.id)
            seen.add(env.id)
        query = self._q("SELECT {s}.cv_enqueue(%s, %s, %s::smallint[], %s::float8[], %s::bytea[], %s::text[])")
        return query, (
            [e.id for e in envelopes],
            [e.queue for e in envelopes],
            [e.priority for e in envelopes],
            [e.eta for e in envelopes],
            [e.body for e in envelopes],
            [e.key for e in envelopes],
        )

    def reserve(
        self, queues: Sequence[str], n: int, *, owner: str, lease: float, timeout: float = 0.0
    ) -> list[Delivery]:
        return self.ack_and_reserve((), queues, n, owner=owner, lease=lease, timeout=timeout)

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
        deadline = time.monotonic() + timeout
        listener = self.db.listener() if timeout > 0 else None
        if listener is not None and not listener.listening:
            listener.wait_listening(min(timeout, LISTEN_WAIT))
        while True:
            generation = listener.generation if listener is not None and listener.listening else None
            if acks or self.waits_stopped or not self._still_idle(generation):  # a stopped wait looks once
                acked = self._acks
                taken, next_due = self._take(queues, n, owner, lease, acks, due=generation is not None)
                acks = ()
                if taken:
                    self._idle_since = None
                    return taken
                if generation is not None:
                    due, in_flight = next_due
                    self._idle_since = (generation, due, in_flight, acked)
            elif self._idle_since is not None and self._idle_since[2] and time.monotonic() >= self._stamp_due:
                due, in_flight = self._stamp()
                self._idle_since = (self._idle_since[0], due, in_flight, self._idle_since[3])
            remaining = deadline - time.monotonic()
            if remaining <= 0 or listener is None or self.waits_stopped:
                return []
            if generation is None:  # not listening (server restarting): look again shortly
                time.sleep(min(remaining, 0.1))
                continue
            assert self._idle_since is not None
            _, due, in_flight, _ = self._idle_since
            wait = remaining if due is None else min(remaining, max(0.0, due - time.monotonic()) + 0.001)
            listener.wait_work(generation, min(wait, IDLE_WAKE) if in_flight else wait)

    def stop_waiting(self) -> None:
        super().stop_waiting()
        listener = self.db.started_listener()
        if listener is not None:
            listener.stop_waits()

    def wake_version(self) -> int | None:
        """The listener's generation, when the app's store signals this schema's channel (else None).

        It moves with every notification on ``cv:<schema>`` (a message landed, a queue was paused or
        resumed: ``PostgresResultBackend.signal_workers``) and when the listener reconnects.
        """
        if not self._store_signals:
            return None
        listener = self.db.listener()
        return listener.generation if listener.listening else None

    def _stamp(self) -> tuple[float | None, bool]:
        """Tell the stall clock (``cv_catch_up``) the server is serving, while leases of others are in flight;
        return what :meth:`_take` returns for an empty reserve (the next due time, any lease in flight).

        An idle worker sends no reserve, and the supervisor's recover comes every 2 s, above STALL_GAP: that
        silence would be taken for a stall of the server, and every running lease, a dead worker's too,
        would be pushed back by it again and again (``brokers/_stalls.py``). One cheap call a second
        (it writes only when ``seen`` is older than STAMP_EVERY) keeps the silence short, as an idle
        Redis reserve does; once no lease is in flight anywhere (their tasks were acked), it stops and an
        idle worker sends nothing again.
        """
        self._stamp_due = time.monotonic() + IDLE_WAKE / 2
        with self.db.connection() as conn:
            row = conn.execute(
                self._q("SELECT {s}.cv_catch_up({s}.cv_now(), %s, %s), " + _NEXT_DUE), (STALL_GAP, STAMP_EVERY, [])
            ).fetchone()
        return _due(None if row is None else row[1:])

    def _still_idle(self, generation: int | None) -> bool:
        """True when nothing was notified since the last empty reserve, nothing came due since, and (when it
        saw leases in flight) this process acked nothing since."""
        idle = self._idle_since
        if generation is None or idle is None or idle[0] != generation:
            return False
        if idle[2] and idle[3] != self._acks:  # it saw leases in flight; one of them may be acked now
            return False
        return idle[1] is None or time.monotonic() < idle[1]

    def _take(
        self,
        queues: Sequence[str],
        n: int,
        owner: str,
        lease: float,
        acks: Sequence[Delivery] = (),
        *,
        due: bool = False,
    ) -> tuple[list[Delivery], tuple[float | None, bool]]:
        """Ack ``acks``, recover, and lease up to ``n`` messages: one ``cv_reserve`` call, one round trip.

        With ``due``, a reserve that finds nothing also says, in the same statement, when (this process's
        ``time.monotonic()``) the next scheduled message comes due or the next lease expires (None: never)
        and whether any lease is in flight: what an idle reserve waits for, with no query of its own.
        Measured on the server's clock, so skew does not matter. That part reads the statement's snapshot,
        taken before ``cv_reserve`` ran: the messages it acks are left out, and one it recovered or promoted
        (for another queue) only makes the wait end at once and the next reserve look again.
        """
        token = uuid.uuid4().hex
        args: tuple[Any, ...] = (
            list(queues),
            n,
            owner,
            token,
            lease,
            self.max_deliveries,
            REQUEUES_PER_DELIVERY * self.max_deliveries,
            STALL_GAP,
            STAMP_EVERY,
            [d.id for d in acks],
            [d.token for d in acks],
        )
        reserve = "SELECT * FROM {s}.cv_reserve(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        if due:  # _NEXT_DUE's one parameter: the acked ids, whose leases are gone
            reserve = (
                "WITH r AS MATERIALIZED (" + reserve + ") "
                "SELECT *, NULL::float8, NULL::float8 FROM r UNION ALL "
                "SELECT NULL, NULL, NULL, NULL, NULL, NULL, " + _NEXT_DUE + " WHERE NOT EXISTS (SELECT FROM r)"
            )
            args += ([d.id for d in acks],)
        with self.db.connection() as conn:
            rows = conn.execute(self._q(reserve), args).fetchall()
        if due and len(rows) == 1 and rows[0][0] is None:
            return [], _due(rows[0][6:])
        order = {q: i for i, q in enumerate(queues)}
        rows.sort(key=lambda r: (order[r[1]], -r[3], r[5]))  # RETURNING has no order: queue, priority, FIFO
        return [Delivery(r[0], r[1], r[2], r[3], r[4], token, owner) for r in rows], (None, False)

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        with self.db.connection() as conn:
            conn.execute(
                self._q(
                    "DELETE FROM {s}.messages m USING unnest(%s::text[], %s::text[]) AS a (id, token) "
                    "WHERE m.id = a.id AND m.token = a.token AND m.state = 2"
                ),
                ([d.id for d in deliveries], [d.token for d in deliveries]),
            )
        self._acks += 1

    def nack(self, delivery: Delivery, *, delay: float = 0.0, body: bytes | None = None) -> None:
        with self.db.connection() as conn:
            conn.execute(
                self._q(
                    "UPDATE {s}.messages SET state = CASE WHEN %(delay)s > 0 THEN 1 ELSE 0 END, "
                    "eta = CASE WHEN %(delay)s > 0 THEN {s}.cv_now() + %(delay)s END, "
                    "body = COALESCE(%(body)s, body), deliveries = deliveries - 1, owner = NULL, token = NULL "
                    "WHERE id = %(id)s AND token = %(token)s AND state = 2"
                ),
                {"delay": delay, "body": body, "id": delivery.id, "token": delivery.token},
            )

    def extend(self, deliveries: Sequence[Delivery], lease: float, running: Collection[str] = ()) -> list[str]:
        if not deliveries:
            return []
        with self.db.connection() as conn:
            rows = conn.execute(
                self._q("SELECT * FROM {s}.cv_extend(%s, %s, %s, %s, %s, %s)"),
                (
                    [d.id for d in deliveries],
                    [d.token for d in deliveries],
                    [d.id in running for d in deliveries],
                    lease,
                    STALL_GAP,
                    STAMP_EVERY,
                ),
            ).fetchall()
        held = {r[0] for r in rows}
        return [d.id for d in deliveries if d.id not in held]

    def dead_letter(self, delivery: Delivery, reason: str, body: bytes | None = None) -> None:
        with self.db.connection() as conn:
            conn.execute(
                self._q(
                    "UPDATE {s}.messages SET state = 3, reason = %s, dead_at = {s}.cv_now(), "
                    "body = COALESCE(%s, body), owner = NULL, token = NULL, key = NULL "
                    "WHERE id = %s AND token = %s AND state = 2"
                ),
                (reason, body, delivery.id, delivery.token),
            )

    def release_owner(self, owner: str, running: Collection[str] | None = None) -> int:
        why = f" times without an acknowledgement (its worker process {owner} died); poison?"
        counted = None if running is None else list(running)
        with self.db.transaction() as conn:
            uncounted = 0
            if counted is not None:
                uncounted = conn.execute(
                    self._q(
                        "UPDATE {s}.messages SET state = 0, owner = NULL, token = NULL, deliveries = deliveries - 1 "
                        "WHERE state = 2 AND owner = %s AND id <> ALL (%s::text[])"
                    ),
                    (owner, counted),
                ).rowcount
            buried = conn.execute(
                self._q(
                    "UPDATE {s}.messages SET state = 3, dead_at = {s}.cv_now(), owner = NULL, token = NULL, "
                    "key = NULL, reason = 'delivered ' || deliveries || %s "
                    "WHERE state = 2 AND owner = %s AND deliveries >= %s "
                    "AND (%s::text[] IS NULL OR id = ANY (%s::text[]))"
                ),
                (why, owner, self.max_deliveries, counted, counted),
            ).rowcount
            returned = conn.execute(
                self._q("UPDATE {s}.messages SET state = 0, owner = NULL, token = NULL WHERE state = 2 AND owner = %s"),
                (owner,),
            ).rowcount
        return uncounted + buried + returned

    def extend_owner(self, owner: str, lease: float) -> int:
        with self.db.connection() as conn:
            return conn.execute(
                self._q("UPDATE {s}.messages SET lease_until = {s}.cv_now() + %s WHERE state = 2 AND owner = %s"),
                (lease, owner),
            ).rowcount

    def recover(self) -> int:
        with self.db.connection() as conn:
            row = conn.execute(
                self._q("SELECT {s}.cv_recover({s}.cv_now(), %s, %s, %s, %s)"),
                (self.max_deliveries, REQUEUES_PER_DELIVERY * self.max_deliveries, STALL_GAP, STAMP_EVERY),
            ).fetchone()
        return int(row[0]) if row is not None else 0

    # -- inspection and dead letters --------------------------------------------------------

    def stats(self) -> list[QueueStats]:
        with self.db.connection() as conn:
            counts = conn.execute(
                self._q("SELECT queue, state, count(*) FROM {s}.messages GROUP BY queue, state")
            ).fetchall()
            names = [row[0] for row in conn.execute(self._q("SELECT name FROM {s}.queues"))]
        per_queue: dict[str, list[int]] = {name: [0, 0, 0, 0] for name in names}
        for queue, state, count in counts:
            per_queue.setdefault(queue, [0, 0, 0, 0])[state] = count
        return [QueueStats(q, *c) for q, c in sorted(per_queue.items())]

    def dead_letters(self, limit: int = 100, queue: str | None = None) -> list[DeadLetter]:
        with self.db.connection() as conn:
            rows = conn.execute(
                self._q(
                    "SELECT id, queue, body, reason, dead_at, deliveries FROM {s}.messages "
                    "WHERE state = 3 AND (%s::text IS NULL OR queue = %s) ORDER BY dead_at, seq LIMIT %s"
                ),
                (queue, queue, limit),
            ).fetchall()
        return [DeadLetter(*row) for row in rows]

    def requeue_dead(self, ids: Sequence[str] | None = None) -> int:
        return self._for_dead(
            "UPDATE {s}.messages SET state = 0, deliveries = 0, requeues = 0, reason = NULL, dead_at = NULL "
            "WHERE state = 3",
            ids,
        )

    def purge_dead(self, ids: Sequence[str] | None = None) -> int:
        return self._for_dead("DELETE FROM {s}.messages WHERE state = 3", ids)

    def _for_dead(self, text: str, ids: Sequence[str] | None) -> int:
        with self.db.connection() as conn:
            if ids is None:
                return conn.execute(self._q(text)).rowcount
            return conn.execute(self._q(text + " AND id = ANY (%s::text[])"), (list(ids),)).rowcount

    def cancel(self, ids: Sequence[str]) -> list[str]:
        with self.db.connection() as conn:
            rows = conn.execute(
                self._q("DELETE FROM {s}.messages WHERE id = ANY (%s::text[]) AND state IN (0, 1) RETURNING id"),
                (list(ids),),
            ).fetchall()
        deleted = {r[0] for r in rows}
        return [i for i in ids if i in deleted]

    def purge(self, queue: str) -> int:
        with self.db.connection() as conn:
            return conn.execute(
                self._q("DELETE FROM {s}.messages WHERE queue = %s AND state IN (0, 1)"), (queue,)
            ).rowcount

    # -- workers ----------------------------------------------------------------------------

    def register_worker(self, info: WorkerInfo, ttl: float) -> None:
        with self.db.connection() as conn:
            conn.execute(
                self._q(
                    "INSERT INTO {s}.workers (id, info, expires_at) VALUES (%s, %s, {s}.cv_now() + %s) "
                    "ON CONFLICT (id) DO UPDATE SET info = excluded.info, expires_at = excluded.expires_at"
                ),
                (info.id, json.dumps(info.to_dict()), ttl),
            )

    def unregister_worker(self, worker_id: str) -> None:
        with self.db.connection() as conn:
            conn.execute(self._q("DELETE FROM {s}.workers WHERE id = %s"), (worker_id,))

    def workers(self) -> list[WorkerInfo]:
        with self.db.connection() as conn:
            rows = conn.execute(
                self._q("SELECT info FROM {s}.workers WHERE expires_at > {s}.cv_now() ORDER BY id")
            ).fetchall()
        return [WorkerInfo.from_dict(json.loads(row[0])) for row in rows]

    def migrate(self) -> list[str]:
        return self.db.migrate()

    def close(self) -> None:
        self._idle_since = None
        self.db.close()


#: Seconds (server clock) until the next scheduled message comes due and until the next lease expires
#: (NULL: none), leases of the ids given as its parameter left out. Two columns of a query's select list.
_NEXT_DUE = (
    "(SELECT min(eta) FROM {s}.messages WHERE state = 1) - {s}.cv_now(), "
    "(SELECT min(lease_until) FROM {s}.messages WHERE state = 2 AND id <> ALL (%s::text[])) - {s}.cv_now()"
)


def _due(row: Sequence[Any] | None) -> tuple[float | None, bool]:
    """:data:`_NEXT_DUE`'s two columns as (when the first comes due on ``time.monotonic()``, None: never;
    whether any lease is in flight)."""
    found = [] if row is None else [float(v) for v in row if v is not None]
    return (time.monotonic() + min(found) if found else None), row is not None and row[1] is not None


def _same_server(a: str, b: str) -> bool:
    """Whether two libpq URLs (``connection.parse_url``'s) reach the same server: equal but for the database
    (one write-ahead log serves every database of a server). Anything else differing counts as another one."""
    first, second = urlsplit(a), urlsplit(b)
    return (first.netloc, first.query) == (second.netloc, second.query)


def _duplicate(exc: psycopg.Error, envelopes: Sequence[Envelope]) -> Exception:
    """What a failed ``cv_enqueue`` raises: DuplicateTaskId for an id held already, else the error itself."""
    if isinstance(exc, psycopg.errors.UniqueViolation):  # a concurrent enqueue of the same id won the race
        return DuplicateTaskId(envelopes[0].id)
    if exc.sqlstate == _HELD_ID:
        return DuplicateTaskId(str(exc.diag.message_primary))
    return exc


def _driver_connection(connection: object) -> psycopg.Connection[Any]:
    """The psycopg connection under ``connection``: itself, or a SQLAlchemy session's or connection's.

    Raises:
        ConfigurationError: nothing psycopg (3) underneath (an async connection included: use a sync one).
    """
    found: object = connection
    session_connection = getattr(found, "connection", None)
    if not isinstance(found, psycopg.Connection) and callable(session_connection):
        found = session_connection()  # a SQLAlchemy Session: its Connection in the session's transaction
    if not isinstance(found, psycopg.Connection):
        found = getattr(getattr(found, "connection", None), "driver_connection", found)  # SQLAlchemy Connection
    if not isinstance(found, psycopg.Connection):
        raise ConfigurationError(
            f"connection= takes a psycopg 3 connection (or a SQLAlchemy Session/Connection on postgresql+psycopg), "
            f"got {type(connection).__name__}"
        )
    return found
