"""The broker contract: what every broker (memory, SQLite, Redis, RabbitMQ) promises.

A broker stores encoded message bodies beside the few fields it routes by and never decodes
them. Its life cycle for one message::

    enqueue ──► ready ──reserve──► in flight (leased to one owner) ──ack──► gone
      │  ▲                            │   │ nack(delay) / lease expiry / release_owner
      ▼  │ due                        │   └────────────► ready or scheduled again
    scheduled                         └─ dead_letter, or > max_deliveries ──► dead

Every method is one atomic step on the server: two workers can never hold the same message, and
a crash between two calls loses nothing. The conformance suite in ``tests/conformance`` runs
unchanged against every implementation.
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any, Self

import msgspec

from conveyor.errors import BrokerError, ConfigurationError

if TYPE_CHECKING:
    from conveyor.backends.base import ResultBackend

#: Uncounted returns of a message that was never seen running (a lease expired before any heartbeat
#: marked it started; on AMQP, a requeue by a closed connection without a recorded start) after which it
#: is buried anyway, per ``max_deliveries``: the bound for a task that kills its whole worker before
#: anything could record that it started.
REQUEUES_PER_DELIVERY = 3


@dataclasses.dataclass(frozen=True, slots=True)
class Envelope:
    """A message as handed to :meth:`Broker.enqueue`: routing fields plus the encoded body.

    Attributes:
        id: the message id (unique per message).
        queue: the queue's name.
        body: the encoded message; opaque to the broker.
        priority: 0-9, higher runs first.
        eta: Unix time before which the message must not be reserved; None for now.
        key: idempotency key; while a message with the same key is pending or running, a new
            one is not enqueued and its id is answered instead.
        explicit_id: the caller chose ``id`` (``task_id=``); False only for an id generated for this
            message, which cannot be in the broker yet (a broker with no index by id, AMQP, checks
            only explicit ids for :class:`~conveyor.errors.DuplicateTaskId`).
    """

    id: str
    queue: str
    body: bytes
    priority: int = 0
    eta: float | None = None
    key: str | None = None
    explicit_id: bool = True


class Delivery(msgspec.Struct, frozen=True, gc=False):
    """A reserved message, leased to one owner until acked, nacked or its lease expires.

    Immutable and hashable like a frozen dataclass; a struct because one is made per message a
    worker reserves, and a frozen dataclass's ``__init__`` (one ``object.__setattr__`` per field)
    cost several times as much.

    Attributes:
        deliveries: how many times the message has been handed out, this time included, less the
            hand-outs given back uncounted (nacks, and leases that ended before it was seen running).
        token: identifies this lease; an ack or extend with an older token is ignored.
    """

    id: str
    queue: str
    body: bytes
    priority: int
    deliveries: int
    token: str
    owner: str


@dataclasses.dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that will not be delivered again until someone requeues it."""

    id: str
    queue: str
    body: bytes
    reason: str
    dead_at: float
    deliveries: int


@dataclasses.dataclass(frozen=True, slots=True)
class QueueStats:
    """How many messages a queue holds in each state."""

    queue: str
    ready: int = 0
    scheduled: int = 0
    in_flight: int = 0
    dead: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerInfo:
    """What a live worker says about itself in its heartbeat."""

    id: str
    hostname: str
    pid: int
    queues: tuple[str, ...]
    concurrency: int
    pool: str
    started: float
    last_seen: float
    processed: int = 0
    failed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict, for brokers that store worker info as text."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkerInfo:
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        data["queues"] = tuple(data.get("queues", ()))
        return cls(**data)


class Broker(abc.ABC):
    """Base class of every broker. Subclasses implement each abstract method atomically.

    Brokers are safe to share between threads of one process. A broker object created before
    ``os.fork()`` opens fresh connections in the child on first use.

    Every broker is built the same way, ``Cls(url, max_deliveries=..., store=...)``, which is what
    :meth:`from_url` relies on.

    Args:
        url: the broker's URL; each engine reads what it needs from it (``memory://`` nothing).
        max_deliveries: deliveries after which an unacknowledged message is dead-lettered.
        store: the app's result backend. A broker whose engine keeps nothing but messages (RabbitMQ)
            keeps its idempotency claims, worker registry and in-flight counts in it, and raises
            ConfigurationError when built without one; the engines that keep their own state
            (memory, SQLite, Redis) do not use it.
    """

    #: Set by :meth:`stop_waiting`: a reserve of this broker object no longer waits for work.
    waits_stopped: bool = False

    def __init__(self, url: str, *, max_deliveries: int = 5, store: ResultBackend | None = None) -> None:
        self.max_deliveries = max_deliveries

    @classmethod
    def from_url(cls, url: str, *, max_deliveries: int = 5, store: ResultBackend | None = None) -> Self:
        """Build the broker ``url`` names (the registry ``conveyor.brokers.from_url`` picks the class by scheme).

        Raises:
            ConfigurationError: a URL the engine cannot use, or no ``store`` for a broker that needs one.
        """
        return cls(url, max_deliveries=max_deliveries, store=store)

    @abc.abstractmethod
    def enqueue(self, envelopes: Sequence[Envelope]) -> list[str]:
        """Store messages durably, all or none; return the id each one lives under.

        A message with a future ``eta`` goes to the schedule, never to the ready queue.
        When an envelope's ``key`` matches a pending or running message, nothing is stored for
        it and the existing message's id is returned in its place.

        Raises:
            BrokerUnavailable: the broker did not answer within the bounded retry.
            DuplicateTaskId: an id the broker still holds (queued, scheduled, in flight or dead), or one
                repeated within the batch; nothing of the batch is stored.
        """

    def enqueue_in(self, connection: object, envelopes: Sequence[Envelope]) -> list[str]:
        """:meth:`enqueue` with the caller's own database connection, inside its open transaction.

        The messages exist once the caller commits and never if it rolls back; nothing here commits.
        Only a broker that lives in the caller's database (PostgreSQL) can do this.

        Raises:
            ConfigurationError: this broker cannot (the default), or ``connection`` is not one it can use.
            DuplicateTaskId: as :meth:`enqueue`; the caller's transaction is then aborted.
        """
        raise ConfigurationError(
            f"connection= (enqueue inside your database transaction) needs the PostgreSQL broker; "
            f"{type(self).__name__} keeps its messages elsewhere"
        )

    async def aenqueue_in(self, connection: object, envelopes: Sequence[Envelope]) -> list[str]:
        """:meth:`enqueue_in` for a coroutine, with the caller's async database connection (PostgreSQL only).

        Raises:
            ConfigurationError: this broker cannot (the default), or ``connection`` is not one it can use.
            DuplicateTaskId: as :meth:`enqueue`; the caller's transaction is then aborted.
        """
        return self.enqueue_in(connection, envelopes)  # the default refuses before touching anything

    async def aenqueue(self, envelopes: Sequence[Envelope]) -> list[str]:
        """:meth:`enqueue` for a coroutine: same promise, same errors, and the event loop runs on meanwhile.

        The default runs :meth:`enqueue` in a thread (SQLite, RabbitMQ: their clients block). If the
        coroutine is cancelled, that thread still finishes the call: the batch is stored whole or not
        at all, never half. Redis overrides it to send on the loop itself.
        """
        return await asyncio.to_thread(self.enqueue, envelopes)

    @abc.abstractmethod
    def reserve(
        self, queues: Sequence[str], n: int, *, owner: str, lease: float, timeout: float = 0.0
    ) -> list[Delivery]:
        """Lease up to ``n`` ready messages to ``owner`` for ``lease`` seconds.

        Queues are served in the order given; within a queue, highest priority first, then
        first in, first out. Before reserving, due scheduled messages are promoted and expired
        leases are recovered (see :meth:`recover`). When nothing is ready, waits up to ``timeout``
        seconds for a message. Each message taken starts a new delivery: its *started* mark (see
        :meth:`extend`) is cleared.
        """

    @abc.abstractmethod
    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Remove finished messages. A delivery whose lease was lost (older token) is ignored."""

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
        """:meth:`ack` ``acks``, then :meth:`reserve`: a worker's steady state, in one round trip if possible.

        The acks are applied before the reservation. If the call raises, some acks may not have
        landed: those messages run again when their lease ends (at-least-once), never lost. The
        default makes the two calls; brokers override it to pipeline them (Redis) or to share one
        transaction (SQLite).
        """
        if acks:
            self.ack(acks)
        return self.reserve(queues, n, owner=owner, lease=lease, timeout=timeout)

    @abc.abstractmethod
    def nack(self, delivery: Delivery, *, delay: float = 0.0, body: bytes | None = None) -> None:
        """Give a message back: ready now, or scheduled ``delay`` seconds from now.

        This delivery does not count toward ``max_deliveries``. ``body`` replaces the stored
        body (a retry carries ``attempt + 1``). A lost lease is ignored.
        """

    def give_back(self, deliveries: Sequence[Delivery]) -> None:
        """:meth:`nack` each of ``deliveries`` (no delay, body unchanged): reserved tasks that did not start.

        The worker returns a long task's prefetched batch-mates this way. The default makes one call per
        delivery; a broker whose nack is a round trip with a disk write (AMQP) gives them back in one.
        A lost lease is ignored. The default tries every one and raises the first error; a delivery
        that did not go back returns when its lease ends.

        Raises:
            BrokerError: some (or all) of them were not given back.
        """
        failed: list[BrokerError] = []
        for delivery in deliveries:
            try:
                self.nack(delivery)
            except BrokerError as exc:
                failed.append(exc)
        if failed:
            raise failed[0]

    @abc.abstractmethod
    def extend(self, deliveries: Sequence[Delivery], lease: float, running: Collection[str] = ()) -> list[str]:
        """Heartbeat: push each lease ``lease`` seconds into the future, and mark the running ones *started*.

        When a whole worker dies (kill -9 of its supervisor), nobody is left to say which of its
        messages were running, and their leases simply expire. The *started* mark tells them apart
        at no per-task cost (it rides on the heartbeat, every ``lease / 3``): an expired lease
        counts a delivery only against a message marked started in this delivery; an unstarted one
        (a prefetched batch-mate) goes back to its place uncounted (see :meth:`recover`).

        Args:
            deliveries: the deliveries whose leases to push.
            lease: seconds from now.
            running: ids among ``deliveries`` that are running now; their message is marked
                started until its next reserve. AMQP ignores it (a redelivered copy counts there
                only if its STARTED result record shows a start).

        Returns:
            The ids of deliveries whose lease is no longer held (expired and redelivered).
        """

    @abc.abstractmethod
    def dead_letter(self, delivery: Delivery, reason: str, body: bytes | None = None) -> None:
        """Move a reserved message to the dead-letter queue with the reason (and optional new body)."""

    @abc.abstractmethod
    def release_owner(self, owner: str, running: Collection[str] | None = None) -> int:
        """Return every message leased to ``owner`` to the ready queue at once (its process died).

        A message the dead process was *running* keeps its delivery counted, so a message that
        keeps killing its worker ends up dead-lettered after ``max_deliveries``. The others (a
        prefetched batch-mate that never started, a finished task whose ack was still pending)
        did not kill anything: they go back to their place without counting, like a nack.

        Args:
            owner: the lease owner name of the dead process.
            running: ids of the messages it was running; None when unknown, and then every
                message of ``owner`` counts a delivery.

        Returns:
            How many messages were released (returned or dead-lettered).
        """

    @abc.abstractmethod
    def extend_owner(self, owner: str, lease: float) -> int:
        """Heartbeat on behalf of ``owner``: push every lease it holds ``lease`` seconds into the future.

        The supervisor calls this for a child whose own heartbeat went stale (a task holding the
        GIL in a long C call starves the child's heartbeat thread), so a live task is never
        handed to another worker. Unlike :meth:`extend` it needs no token: it is called by the
        process that owns the child, never by another worker. A broker whose leases live on
        the holding process's own connection (AMQP) cannot do this and returns 0.

        Returns:
            How many leases were extended.
        """

    @abc.abstractmethod
    def recover(self) -> int:
        """Promote due scheduled messages and recover expired leases now; return how many moved.

        An expired lease of a message marked started (:meth:`extend` with ``running``) counts its
        delivery: back to its place, or dead-lettered once delivered ``max_deliveries`` times, so a
        task that keeps killing its whole worker ends dead. One never marked started (it had not
        run for a heartbeat yet, or never started at all) goes back uncounted, like a nack, and
        counts an uncounted requeue instead; ``REQUEUES_PER_DELIVERY * max_deliveries`` of those
        bury it (a task that kills its worker before the first heartbeat still ends dead).
        """

    @abc.abstractmethod
    def stats(self) -> list[QueueStats]:
        """Counts per known queue, sorted by queue name."""

    @abc.abstractmethod
    def dead_letters(self, limit: int = 100, queue: str | None = None) -> list[DeadLetter]:
        """Dead letters, oldest first."""

    @abc.abstractmethod
    def requeue_dead(self, ids: Sequence[str] | None = None) -> int:
        """Move dead letters (all when ``ids`` is None) back to their ready queue, deliveries and requeues reset."""

    @abc.abstractmethod
    def purge_dead(self, ids: Sequence[str] | None = None) -> int:
        """Delete dead letters (all when ``ids`` is None); return how many."""

    @abc.abstractmethod
    def cancel(self, ids: Sequence[str]) -> list[str]:
        """Delete ready or scheduled messages by id (revoked before they started); return the ids deleted.

        In-flight and dead messages are left alone.
        """

    @abc.abstractmethod
    def purge(self, queue: str) -> int:
        """Delete the ready and scheduled messages of a queue; in-flight ones are left alone."""

    @abc.abstractmethod
    def register_worker(self, info: WorkerInfo, ttl: float) -> None:
        """Record a worker heartbeat; the worker counts as live for ``ttl`` seconds."""

    @abc.abstractmethod
    def unregister_worker(self, worker_id: str) -> None:
        """Forget a worker that stopped cleanly."""

    @abc.abstractmethod
    def workers(self) -> list[WorkerInfo]:
        """Live workers (heartbeat younger than its ttl)."""

    def migrate(self) -> list[str]:
        """Create or upgrade the engine's schema (``conveyor db migrate``); one line per step taken.

        Only engines whose schema is versioned and migrated on command (PostgreSQL) do anything; the others
        create what they need themselves and return an empty list.
        """
        return []

    def ping(self) -> None:
        """Open (or check) the connection: return once the broker answers, as a worker checks at start-up.

        The default reads :meth:`stats`; engines override it with something cheaper.

        Raises:
            BrokerUnavailable: the broker did not answer within the engine's bounded retry.
            BrokerError: it answered with a refusal (a vhost the user may not use, say).
        """
        self.stats()

    def wake_version(self) -> int | None:
        """A number that moves whenever idle workers of this process were woken: a message landed, the
        store signalled them (:meth:`Store.signal_workers <conveyor.backends.base.Store.signal_workers>`),
        or the broker reconnected. None (the default) when the broker cannot tell.

        A worker child re-reads its queues' pause flags only when this moved since its last read
        (``pausing.PausedQueues``), so an idle worker on PostgreSQL sends no query for them.
        """
        return None

    def stop_waiting(self) -> None:
        """From now on a reserve returns without waiting for work, and one waiting now returns early.

        A worker child's SIGTERM handler calls it, so a child idle in its blocking reserve stops at
        once instead of when the wait's timeout ends. A cut-short reserve returns what it took (the
        worker gives it back), and it still takes what is ready. Not undone: it is for a process
        that stops. Safe from a signal handler and from any thread: it takes no lock that the
        interrupted thread may hold. Each engine ends its own wait: SQLite's and RabbitMQ's polls
        look at the flag between naps (at most 50 ms), PostgreSQL's wakes its listener's waiters,
        Redis pushes a token to the list the blocked pop also waits on. The default only sets the
        flag (an engine that does not look at it ends its wait at the timeout).
        """
        self.waits_stopped = True

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release connections. The broker may be used again afterwards (it reconnects)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release the running event loop's connections (engines with an async client: Redis)."""
