"""The result backend contract, and the Store contract it extends.

:class:`Store` holds the coordination primitives features need across processes and machines:
leader leases (beat elects one firing scheduler), unique claims (beat's one-enqueue-per-slot, the
AMQP broker's ``key=`` deduplication), small values with a time to live (beat's last fired slot
per entry, the AMQP broker's worker registry and in-flight counts), gathers (a chord's member
results, counted atomically so its body fires once: ``workflows/``) and token buckets (global rate
limits: ``flowcontrol.py``).

:class:`ResultBackend` is a Store that also keeps one encoded :class:`~conveyor.states.ResultRecord`
per task id with a time to live, and lets a caller wait for a record to reach a final state, from a
thread (:meth:`ResultBackend.wait`) or a coroutine (:meth:`ResultBackend.async_wait`). Waiting wakes as
soon as the record lands, without polling (Redis: a blocking pop on a wake-up token; SQLite: a datagram
from the writing process; memory: a condition or a future); ``docs/results.md`` says what each engine
does. :class:`Wakers` is the per-process registry of waiting threads and coroutines those engines share.

The primitives live on the backend rather than on the broker because every deployment has a result
backend and it is always a store (SQLite or Redis), while a broker may not be one (RabbitMQ). A broker
that needs a store is handed the app's backend when it is built (``Broker.from_url(..., store=)``).
See ``docs/beat.md`` and ``docs/amqp.md``.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Self

from conveyor.states import State, decode_record

#: Entries (batches of events) an event log keeps at most; older ones are trimmed as new ones arrive.
MAX_BATCHES = 10_000


class Store(abc.ABC):
    """Leases, claims and values shared by every process of a deployment; all methods are thread-safe.

    It also keeps the event log (``conveyor/eventlog.py``): batches of encoded events, bounded to
    MAX_BATCHES entries and an age. A backend without one keeps the defaults, which raise
    NotImplementedError: workers then log once that events are off.

    Each method is one atomic step on the server. Expiry follows the server's clock where there is a
    server (Redis), so processes on machines with skewed clocks agree on it.
    """

    @abc.abstractmethod
    def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        """Take the lease ``name`` for ``owner``, or renew it when ``owner`` already holds it, for ``ttl`` seconds.

        Atomic on the server: of any number of owners calling at once, at most one holds the
        lease afterwards. A lease nobody renews lapses ``ttl`` seconds after its last renewal and
        any owner may then take it.

        Returns:
            True when ``owner`` holds the lease after the call.
        """

    def lease_holder(self, name: str) -> str | None:
        """Who holds the lease ``name`` now (None: nobody, or it lapsed); for display (the dashboard's beat leader).

        A backend that cannot tell keeps this default, None.
        """
        return None

    @abc.abstractmethod
    def release_lease(self, name: str, owner: str) -> None:
        """Give the lease ``name`` up, only if ``owner`` holds it (a lease taken over since is left alone)."""

    @abc.abstractmethod
    def claim(self, key: str, ttl: float) -> bool:
        """Create ``key`` if it does not exist, expiring after ``ttl`` seconds; atomic on the server.

        Returns:
            True when this call created the key; False when it already exists (and has not expired).
            Of any number of concurrent calls on one key, exactly one returns True.
        """

    @abc.abstractmethod
    def unclaim(self, key: str) -> None:
        """Delete the claim ``key`` (nothing happens when it does not exist)."""

    @abc.abstractmethod
    def get_value(self, key: str) -> bytes | None:
        """The value stored under ``key`` by :meth:`set_value`, or None (never set, expired or deleted)."""

    @abc.abstractmethod
    def set_value(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store ``value`` under ``key``, replacing any older one, for ``ttl`` seconds (None: no expiry)."""

    @abc.abstractmethod
    def delete_value(self, key: str) -> None:
        """Delete the value under ``key`` (nothing happens when there is none)."""

    def location(self) -> str | None:
        """Where this store commits, as an engine-specific string a broker built with it may compare with its own.

        None (the default): nothing a broker shares. The PostgreSQL backend answers its server and schema,
        so that a PostgreSQL broker on the same server knows the two share one write-ahead log.
        """
        return None

    def beside_acks(self) -> None:  # noqa: B027 - optional hook, nothing to change by default
        """Told by the broker built with this store: its acks commit after this store's result writes, to
        the same write-ahead log, so a crash that forgets a result forgets its ack too (the task runs again).

        The default ignores it. The PostgreSQL backend then writes worker result batches without waiting
        for the WAL flush.
        """

    def beside_leases(self) -> None:  # noqa: B027 - optional hook, nothing to change by default
        """Told by the broker built with this store: the broker's message leases live beside this store's
        records (Redis: the same server, database and prefix, not a Cluster; PostgreSQL: the same schema),
        so :meth:`ResultBackend.set_held` can check each lease in the result write's own atomic step.

        The default ignores it (its writes are then fenced by the worker's check alone).
        """

    def signal_workers(self) -> None:  # noqa: B027 - optional hook, nothing to signal by default
        """Wake idle workers so they read their queue flags again (after a queue was paused or resumed).

        The default does nothing: workers re-read the flags every second anyway. A backend whose broker
        lets idle workers sleep without polling (PostgreSQL) signals them here instead
        (:meth:`Broker.wake_version <conveyor.brokers.base.Broker.wake_version>`).
        """

    @abc.abstractmethod
    def gather(self, key: str, index: int, value: bytes, ttl: float) -> int:
        """Put ``value`` in slot ``index`` of the gather ``key``; return how many slots are filled. One atomic step.

        Writing a slot again replaces its value and does not count twice, so a member that runs twice
        (redelivered after a crash) is counted once. The whole gather expires ``ttl`` seconds after its
        last write. Of concurrent calls that fill the last slot, each sees the full count: the caller
        makes what follows idempotent (a chord's body is enqueued under a fixed id).
        """

    @abc.abstractmethod
    def gathered(self, key: str) -> dict[int, bytes]:
        """The filled slots of the gather ``key``, by index (empty once expired or deleted)."""

    @abc.abstractmethod
    def delete_gather(self, key: str) -> None:
        """Delete the gather ``key`` (nothing happens when there is none)."""

    @abc.abstractmethod
    def take_token(self, bucket: str, rate: float, burst: float) -> float:
        """Reserve the next token of the token bucket ``bucket``, refilled at ``rate`` tokens a second up to ``burst``.

        An empty bucket lends from the future: the token is reserved anyway and the call says when it
        is due, so each caller asks once and waits (deferred, not spinning) for its own token. Atomic
        on the server, whose clock refills the bucket, so every worker on every machine draws from the
        one bucket. A bucket not used for a while is full again (and its row or key expires).

        Returns:
            Seconds until the reserved token is due: 0.0 when it was there now.
        """

    def append_events(self, batch: bytes, ttl: float) -> None:
        """Append one batch to the event log, then trim it to MAX_BATCHES entries and to ``ttl`` seconds of age."""
        raise NotImplementedError(f"{type(self).__name__} keeps no event log")

    def read_events(self, after: str | None, limit: int) -> list[tuple[str, bytes]]:
        """Up to ``limit`` event-log entries after the cursor ``after`` (None: from the oldest), oldest first.

        Returns:
            ``(cursor, batch)`` pairs; pass the last cursor back to read on.
        """
        raise NotImplementedError(f"{type(self).__name__} keeps no event log")

    def newest_events(self, limit: int) -> list[tuple[str, bytes]]:
        """The newest ``limit`` event-log entries, oldest first (what a dashboard shows; engines read from the end)."""
        window: list[tuple[str, bytes]] = []
        after: str | None = None
        while page := self.read_events(after, limit):
            window = (window + page)[-limit:]
            after = page[-1][0]
        return window

    def last_event_cursor(self) -> str | None:
        """The cursor of the newest event-log entry (read after it to see only what comes next); None when empty."""
        raise NotImplementedError(f"{type(self).__name__} keeps no event log")

    def add_counts(self, key: str, counts: Mapping[str, float]) -> None:
        """Add each value of ``counts`` to the counter of that name in the counter set ``key`` (a new one starts at 0).

        Counters never expire and only grow (Prometheus counters kept by the engine: conveyor/metrics.py);
        each addition is atomic, so any number of workers add to one set at once.
        """
        raise NotImplementedError(f"{type(self).__name__} keeps no counters")

    def counts(self, key: str) -> dict[str, float]:
        """Every counter of the counter set ``key`` by name (empty when nothing was added)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no counters")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the store reconnects if used again."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release the running event loop's connections (engines with an async client: Redis)."""


#: Final states that a REVOKED write does not replace: the task finished before the revocation.
_FINISHED = frozenset({State.SUCCESS, State.FAILURE})


def replaces(new: State, old: State | None) -> bool:
    """Whether a record in state ``new`` may replace a live one in state ``old`` (see :meth:`ResultBackend.set`)."""
    if old is State.REVOKED:
        return new is State.REVOKED
    return not (new is State.REVOKED and old in _FINISHED)


class ResultBackend(Store):
    """Base class of every result backend: task records, plus the :class:`Store` primitives; thread-safe."""

    def __init__(self, url: str) -> None:
        """Every backend is built from its URL alone; each engine reads what it needs (``memory://`` nothing)."""

    @classmethod
    def from_url(cls, url: str) -> Self:
        """Build the backend ``url`` names (the registry ``conveyor.backends.from_url`` picks the class by scheme).

        Raises:
            ConfigurationError: a URL the engine cannot use.
        """
        return cls(url)

    def migrate(self) -> list[str]:
        """Create or upgrade the engine's schema (``conveyor db migrate``); one line per step taken.

        Only engines whose schema is versioned and migrated on command (PostgreSQL) do anything.
        """
        return []

    @abc.abstractmethod
    def set(self, task_id: str, state: State, record: bytes, ttl: float) -> None:
        """Store ``record`` (an encoded ResultRecord in ``state``) for ``ttl`` seconds, replacing any older one.

        A final state wakes every :meth:`wait` on that id. One rule, checked atomically on the server
        (:func:`replaces`): **a revocation and a finished run do not replace each other**. A live
        REVOKED record is replaced only by another REVOKED record (a revoked task that was already
        running cannot turn it into STARTED, SUCCESS or FAILURE), and a REVOKED write does not replace
        a SUCCESS or FAILURE record (revoking a finished task changes nothing). The refused write is
        dropped silently; :meth:`try_set` says whether it landed. :meth:`forget` removes any record.
        """

    def try_set(self, task_id: str, state: State, record: bytes, ttl: float) -> bool:
        """:meth:`set`, returning False when the rule refused the write (the id was revoked, say).

        This default reads then writes; every engine of conveyor overrides it with one atomic step.
        """
        raw = self.get(task_id)
        if raw is not None and not replaces(state, decode_record(raw).state):
            return False
        self.set(task_id, state, record, ttl)
        return True

    def set_many(self, items: Sequence[tuple[str, State, bytes]], ttl: float) -> None:
        """Store several records in one round trip where the engine allows it."""
        for task_id, state, record in items:
            self.set(task_id, state, record, ttl)

    def set_held(
        self, items: Sequence[tuple[str, State, bytes]], ttl: float, leases: Sequence[tuple[str, str]]
    ) -> list[str]:
        """:meth:`set_many` for a worker's finished tasks, each fenced by its lease where the backend sees the leases.

        ``leases[i]`` is ``(queue, lease token)`` of the delivery whose run wrote ``items[i]`` (the task id
        is the message id; an empty token writes that record unfenced). Once the broker built with this
        store told it that it sees the broker's leases (:meth:`Store.beside_leases`), each record lands
        only if its message is still leased under that token, checked in the write's own atomic step on
        the server: a write from a run whose lease was lost (its message redelivered after a network cut,
        say) is refused whenever it arrives, even one already on the wire when the link went down.
        Elsewhere (the default, and a backend on another server than the broker) this is
        :meth:`set_many`: only the worker's check before the write fences (``LeaseKeeper.fence``).

        Returns:
            The ids whose record was refused because their lease is no longer held (nothing changed).
        """
        self.set_many(items, ttl)
        return []

    def try_set_held(
        self, task_id: str, state: State, record: bytes, ttl: float, lease: tuple[str, str]
    ) -> bool | None:
        """:meth:`try_set` for a worker's run, fenced by its delivery's ``(queue, lease token)`` like :meth:`set_held`.

        Returns:
            True when the record landed, False when the revocation rule refused it, None when the lease
            is no longer held where the backend sees the leases (nothing changed).
        """
        return self.try_set(task_id, state, record, ttl)

    @abc.abstractmethod
    def get(self, task_id: str) -> bytes | None:
        """The stored record, or None if there is none (never stored, expired or forgotten)."""

    def get_many(self, task_ids: Sequence[str]) -> list[bytes | None]:
        """The stored records of several ids, in order, in one round trip where the engine allows it."""
        return [self.get(task_id) for task_id in task_ids]

    @abc.abstractmethod
    def wait(self, task_id: str, timeout: float) -> bytes | None:
        """Block until the record is in a final state, up to ``timeout`` seconds.

        Returns:
            The final record, or the latest non-final one (or None) when the timeout passed.
        """

    @abc.abstractmethod
    def forget(self, task_id: str) -> None:
        """Delete the record."""

    async def aget(self, task_id: str) -> bytes | None:
        """:meth:`get` for a coroutine; the default runs it in a thread, off the event loop."""
        return await asyncio.to_thread(self.get, task_id)

    async def async_wait(self, task_id: str, timeout: float) -> bytes | None:
        """:meth:`wait` for a coroutine: the same answer, and the event loop runs on meanwhile.

        (Named so because ``await`` is a keyword.) Cancelling the coroutine leaves nothing behind:
        no waiter registered, no connection borrowed. The default, for a third-party backend, runs
        :meth:`wait` in a thread; a cancelled call then leaves that thread waiting out ``timeout``.
        """
        return await asyncio.to_thread(self.wait, task_id, timeout)

    async def async_changed(self, task_id: str, last: bytes | None, timeout: float) -> bytes | None:
        """The record once it is no longer ``last`` (a progress note, a new state), or the latest one after
        ``timeout`` seconds: what ``aupdates()`` waits on.

        The default is :meth:`async_wait`, woken by a final write only: a progress note shows when the
        timeout passes. An engine that pushes every write (Redis) returns as soon as it changed.
        Cancelling the coroutine leaves nothing behind, as for :meth:`async_wait`.
        """
        return await self.async_wait(task_id, timeout)

    def ping(self) -> None:
        """Return once the backend answers (a worker checks at start-up); the default reads a record.

        Raises:
            BrokerUnavailable: the backend did not answer within its bounded retry.
        """
        self.get("conveyor-ping")


#: One waiting party: a thread's Event, or a coroutine's Future (resolved on its own loop).
Waker = threading.Event | asyncio.Future[None]


class Wakers:
    """Which threads and coroutines of this process wait for which task id; thread-safe.

    A backend whose engine cannot block a reader until a write (SQLite, memory) registers each
    waiter here *before* it reads the record, and calls :meth:`wake` after a final write is
    committed (in this process, or when another process says so): a write that lands after the
    read finds the waiter registered, so no wake is lost in between.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_id: dict[str, set[Waker]] = {}

    def __len__(self) -> int:
        """How many waiters are registered (0 once every wait has ended, cancelled ones included)."""
        with self._lock:
            return sum(len(waiters) for waiters in self._by_id.values())

    @contextlib.contextmanager
    def thread(self, task_id: str) -> Iterator[threading.Event]:
        """Register an Event set when ``task_id`` is woken; unregistered on exit."""
        event = threading.Event()
        self._add(task_id, event)
        try:
            yield event
        finally:
            self._remove(task_id, event)

    @contextlib.contextmanager
    def coroutine(self, task_id: str) -> Iterator[asyncio.Future[None]]:
        """Register a Future of the running loop resolved when ``task_id`` is woken; unregistered on exit."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._add(task_id, future)
        try:
            yield future
        finally:
            self._remove(task_id, future)
            future.cancel()

    def wake(self, task_ids: Iterable[str]) -> None:
        """Wake every waiter on these ids, from any thread."""
        with self._lock:
            woken = [w for task_id in task_ids for w in self._by_id.get(task_id, ())]
        for waker in woken:
            if isinstance(waker, threading.Event):
                waker.set()
            else:
                with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits any more
                    waker.get_loop().call_soon_threadsafe(_resolve, waker)

    def _add(self, task_id: str, waker: Waker) -> None:
        with self._lock:
            self._by_id.setdefault(task_id, set()).add(waker)

    def _remove(self, task_id: str, waker: Waker) -> None:
        with self._lock:
            waiters = self._by_id.get(task_id)
            if waiters is not None:
                waiters.discard(waker)
                if not waiters:
                    del self._by_id[task_id]


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


#: What a wait loop reads: (the record is final, the record or None).
Reading = tuple[bool, bytes | None]


def wait_woken(
    wakers: Wakers, task_id: str, timeout: float, read: Callable[[], Reading], recheck: float
) -> bytes | None:
    """Block until ``read`` says final, woken through ``wakers``; re-read every ``recheck`` s as a safety net.

    The safety net covers a wake that never comes (a writer that could not reach this process);
    it is no polling interval: a result normally wakes the waiter the moment it is written.
    """
    deadline = time.monotonic() + timeout
    with wakers.thread(task_id) as woken:
        while True:
            final, record = read()
            remaining = deadline - time.monotonic()
            if final or remaining <= 0:
                return record
            woken.wait(min(remaining, recheck))
            woken.clear()


async def await_woken(
    wakers: Wakers, task_id: str, timeout: float, read: Callable[[], Awaitable[Reading]], recheck: float
) -> bytes | None:
    """:func:`wait_woken` for a coroutine: the loop runs on while it waits; cancelling it unregisters the waiter."""
    deadline = time.monotonic() + timeout
    while True:
        with wakers.coroutine(task_id) as woken:
            final, record = await read()
            remaining = deadline - time.monotonic()
            if final or remaining <= 0:
                return record
            await asyncio.wait([woken], timeout=min(remaining, recheck))
