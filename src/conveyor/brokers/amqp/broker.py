"""AMQPBroker: the broker contract on RabbitMQ, through pika, for teams that already run it.

How the contract maps onto AMQP (docs/amqp.md has the full story):

- **enqueue**: persistent messages on durable classic queues (``x-max-priority`` 9), a batch
  published in one transaction: ``enqueue`` returns at ``tx.commit-ok`` (RabbitMQ stored all of it).
- **quorum queues** (``queue_type=quorum`` in the URL): every queue declared ``x-queue-type: quorum``,
  priorities in three bands (a ready queue each, names.py), and a waiting reserve polls
  (``basic.get``) instead of being pushed, because quorum queues refuse the channel-wide
  ``basic.qos`` the push window needs (docs/amqp.md, "Quorum queues"). A process's first message to each
  quorum queue goes through a confirm channel, sent again while the queue rejects it (``confirmed.py``).
- **reserve**: with a wait, pushed (``basic.consume``) under a channel-wide ``basic.qos`` window of
  held + ``n``, shrunk back to what is held after a partial batch: nothing is prefetched beyond the
  free slots, and an idle worker sends nothing. Without a wait, ``basic.get`` (an exact look). The
  delivery stays unacknowledged on this process's channel while the task runs, so RabbitMQ requeues
  it the moment the process dies (its connection closes).
- **lease**: a deadline kept here; ``extend`` pushes it (and answers AMQP heartbeats). A process that
  stops heartbeating a delivery gives it back when its lease runs out (``reserve``/``recover``), counted
  in heartbeats of this process, so a stall of the whole process (a task holding the GIL) expires nothing.
- **deliveries / max_deliveries**: each copy carries a header with the deliveries before it. A copy
  RabbitMQ redelivers after a connection closed is counted and republished (or dead-lettered) only if
  its task had started (its STARTED result record says so): a crash never charges prefetched batch-mates.
- **eta / delays**: fixed-TTL delay-level queues that dead-letter into an ``.eta`` queue, whose
  consumer (the promoter thread, ``promoter.py``) sends due messages to ready and the others to the
  next level: never early.
- **dead letters, cancel, purge, stats, registry**: see ``admin.py`` and ``scan.py``.
- **shared state**: RabbitMQ keeps messages only, so the broker is built with a store (the app's result
  backend) that holds its idempotency claims (``claims.py``), worker heartbeats (``admin.py``) and
  in-flight counts (``inflight.py``), and whose task records say which redelivered copies ran.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import time
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit

import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic, BasicProperties

from conveyor.brokers._urls import split_prefix
from conveyor.brokers.amqp.admin import Admin
from conveyor.brokers.amqp.claims import StoreClaims, claims_of
from conveyor.brokers.amqp.confirmed import publish_confirmed
from conveyor.brokers.amqp.connection import AMQPConnection
from conveyor.brokers.amqp.inflight import Counts, InFlightBoard, add
from conveyor.brokers.amqp.names import (
    DEFAULT_PREFIX,
    QUEUE_TYPES,
    QueueNames,
    declarations,
    level_for,
    level_ms,
    queue_names,
)
from conveyor.brokers.amqp.promoter import Promoter
from conveyor.brokers.amqp.redelivery import (
    REQUEUES_PER_DELIVERY,
    STALL,
    Held,
    counted_start,
    expired,
    start_to_count,
)
from conveyor.brokers.amqp.scan import (
    Meta,
    add_to_registry,
    dead_properties,
    keep_unmarked,
    meta_of,
    properties,
    scan,
)
from conveyor.brokers.base import Broker, DeadLetter, Delivery, Envelope, QueueStats, WorkerInfo
from conveyor.errors import BrokerError, ConfigurationError

if TYPE_CHECKING:
    from conveyor.backends.base import ResultBackend

log = logging.getLogger("conveyor.broker")

#: Idle polling: first and longest sleep between looks at empty queues, in seconds.
POLL_MIN, POLL_MAX = 0.002, 0.05
#: Seconds before in-flight counts that failed to reach the result backend are written again.
COUNTS_RETRY = 2.0
#: "Nothing scheduled that this process knows of."
INF = float("inf")
#: Seconds a reserve keeps looking every millisecond after a delay level it knows of ran out (the
#: message moves to ``.eta`` by dead-lettering, a moment after its TTL).
HOP_SLACK = 0.01
#: Seconds between a busy reserve's looks at the ``.eta`` queues (a look is one round trip per queue;
#: a message may become ready this much after its level ran out, never before its eta).
PROMOTE_EVERY = 0.01
#: Tokens of deliveries this process settled, remembered so a late heartbeat does not report them lost.
SETTLED_KEEP = 4096
#: Seconds a waiting reserve holds the connection's lock at a time (other threads take it in between).
PUSH_SLICE = 0.1
#: Seconds a waiting reserve that follows a full batch waits for the rest of RabbitMQ's burst once its
#: first delivery came (``AMQPBroker._gather``).
GATHER = 0.001


def split_queue_type(url: str) -> tuple[str, str]:
    """(the URL without ``queue_type=``, the queue type: ``classic`` unless the URL says ``quorum``).

    Raises:
        ConfigurationError: ``queue_type`` is neither ``classic`` nor ``quorum``.
    """
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    given = [value for name, value in query if name == "queue_type"]
    queue_type = given[-1] if given else "classic"
    if queue_type not in QUEUE_TYPES:
        raise ConfigurationError(f"queue_type={queue_type!r} in an AMQP URL: use classic (the default) or quorum")
    rest = urlencode([(name, value) for name, value in query if name != "queue_type"])
    return parts._replace(query=rest).geturl(), queue_type


def _send(
    queue: str, body: bytes, props: BasicProperties, sent: tuple[set[str], set[str], str], ch: BlockingChannel
) -> None:
    """Publish one message on a confirm channel (NackError if the queue rejects it); once confirmed, note
    its id as stored and its queue as accepting (``sent``: ids stored, queues accepting, this message's id)."""
    ch.basic_publish("", queue, body, props)
    stored, accepting, msg_id = sent
    stored.add(msg_id)
    accepting.add(queue)


@dataclasses.dataclass(eq=False)
class Pushed:
    """A delivery RabbitMQ pushed to this channel that no reserve handed out yet."""

    queue: str
    method: Basic.Deliver
    props: BasicProperties
    body: bytes


class AMQPBroker(Broker):
    """A broker on RabbitMQ; ``amqp://`` and ``amqps://`` URLs with an optional ``prefix=``.

    Args:
        url: a pika URL (``amqp://user:pass@host:5672/vhost``); ``prefix`` (default ``conveyor``)
            starts every queue name.
        max_deliveries: deliveries after which an unacknowledged message is dead-lettered.
        store: the app's result backend; required (see the module docstring).
        retry_for: overrides :attr:`retry_for` for this broker.
        claim_land_wait: overrides :attr:`claim_land_wait` for this broker.

    Raises:
        ConfigurationError: no ``store``.
    """

    #: Seconds an operation keeps retrying connection faults (backoff 0.05 s doubling to 1 s)
    #: before it raises BrokerUnavailable.
    retry_for: float = 5.0
    #: Seconds to open a connection.
    connect_timeout: float = 2.0
    #: Seconds after its claim an idempotency key or explicit id whose message never landed is taken
    #: for the claim of a producer that died before ``tx.commit`` (see claims.py).
    claim_land_wait: float = 30.0

    def __init__(
        self,
        url: str = "amqp://guest:guest@127.0.0.1:5672/%2F",
        *,
        max_deliveries: int = 5,
        store: ResultBackend | None = None,
        retry_for: float | None = None,
        claim_land_wait: float | None = None,
    ) -> None:
        super().__init__(url, max_deliveries=max_deliveries)
        if store is None:
            raise ConfigurationError(
                "AMQPBroker keeps its idempotency claims, worker registry and in-flight counts in a store (RabbitMQ "
                "keeps messages only): build it with store=<a result backend>, as App(broker='amqp://...', "
                "backend='redis://...' or 'sqlite:///...') does"
            )
        self._store = store
        pika_url, self.prefix, self.url = split_prefix(url, DEFAULT_PREFIX, "AMQP")
        pika_url, self.queue_type = split_queue_type(pika_url)
        self._conn = AMQPConnection(
            pika_url,
            self.url,
            retry_for=self.retry_for if retry_for is None else retry_for,
            connect_timeout=self.connect_timeout,
            on_fork=self._forget_parent,
        )
        self._held: dict[str, Held] = {}
        self._beats = 0  # extend calls of this process: the clock local leases expire by
        self._settled: dict[str, None] = {}  # tokens acked, nacked or buried here (oldest first)
        self._declared: set[str] = set()  # conveyor queues declared (and registered) by this process
        self._accepting: set[str] = set()  # quorum queues this process sent a message to (confirmed.py)
        self._next_hop = INF  # monotonic time a delay level this process used runs out
        self._next_promote = 0.0  # monotonic time reserve next looks at the .eta queues
        self._owners: set[str] = set()  # lease owners this process served (their in-flight is counted live)
        land_wait = self.claim_land_wait if claim_land_wait is None else claim_land_wait
        self._keys = StoreClaims(store, self.prefix, land_wait)
        self._admin = Admin(self._conn, self.prefix, store, self._declared, self.queue_type)
        self._board = InFlightBoard(store, self.prefix)
        self._counts_paused_until = 0.0  # monotonic time before which a failed counts write is not retried
        # Push consumption (docs/amqp.md, "reserve"): consumers of this connection's generation.
        self._consume_generation = -1
        self._consumers: dict[str, str] = {}  # conveyor queue -> consumer tag on the main channel
        self._inbox: list[Pushed] = []  # deliveries pushed and not handed out yet (at most the window)
        self._promoter = Promoter(
            self._conn.params, self.prefix, self.queue_type == "quorum"
        )  # consumes the .eta queues (promoter.py)
        self._conn.before_call = self._before_call
        self._idle_pause = POLL_MIN  # a polling reserve's next pause (quorum queues; see _reserve_pulled)
        self._window = 0  # the main channel's prefetch (basic.qos, global): held + free slots
        self._last_full = False  # the last waiting reserve handed out all it asked for (see _gather)

    def __repr__(self) -> str:
        return f"AMQPBroker({self.url!r}, prefix={self.prefix!r})"

    # -- messages -----------------------------------------------------------------------------

    def enqueue(self, envelopes: Sequence[Envelope]) -> list[str]:
        if not envelopes:
            return []
        if any(e.key is not None or e.explicit_id for e in envelopes):
            answer, fresh, claimed = self._keys.claim(envelopes)
        else:
            answer, fresh, claimed = [e.id for e in envelopes], list(envelopes), []

        confirmed: set[str] = set()  # ids already stored through a confirm (a retried op skips them)

        def op(ch: BlockingChannel) -> None:
            now = time.time()
            first: list[tuple[str, Callable[[BlockingChannel], None]]] = []
            for env in fresh:
                self._declare(ch, env.queue)
            publishes: list[tuple[str, BasicProperties, bytes]] = []
            for env in fresh:
                entry = Meta(env.id, env.priority, 0, env.eta, env.key, explicit=env.explicit_id)
                queue, props = self._route(self._names(env.queue), entry, now)
                if env.id in confirmed:
                    continue
                if self.queue_type == "quorum" and queue not in self._accepting and queue not in {q for q, _ in first}:
                    # Its first message from this process: a queue being created may reject it (confirmed.py).
                    sent = (confirmed, self._accepting, env.id)
                    first.append((queue, functools.partial(_send, queue, env.body, props, sent)))
                else:
                    publishes.append((queue, props, env.body))
            if first:
                publish_confirmed(self._conn.connection, first, self._conn.retry_for)
            # after the confirms: behind the first messages, into running queues; the rest of the batch in
            # one write, sent with the commit: one wait for the batch (docs/amqp.md, "What one delay() waits for")
            self._conn.queue_publishes(ch, publishes)
            ch.tx_commit()

        try:
            self._conn.call(op)
        except BaseException:
            self._keys.undo(claimed)
            raise
        self._keys.landed(claimed, fresh)
        return answer

    def reserve(
        self, queues: Sequence[str], n: int, *, owner: str, lease: float, timeout: float = 0.0
    ) -> list[Delivery]:
        if n <= 0 or not queues:
            return []
        if timeout > 0 and self.queue_type == "quorum":
            # Quorum queues refuse a channel-wide basic.qos: poll, and let the promoter thread
            # consume the .eta queues (so the polls do not look at them).
            self._promoter.serve(queues)
            return self._reserve_pulled(queues, n, owner, lease, timeout, promote=False)
        if timeout > 0:
            return self._reserve_pushed(queues, n, owner, lease, timeout)
        return self._reserve_pulled(queues, n, owner, lease, timeout)

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
        """Ack, then reserve; the prefetch window is set once, by the reserve (no basic.qos for the ack)."""
        if acks:
            self._ack(acks, shrink=n <= 0 or not queues)
        return self.reserve(queues, n, owner=owner, lease=lease, timeout=timeout)

    def _reserve_pushed(
        self, queues: Sequence[str], n: int, owner: str, lease: float, timeout: float
    ) -> list[Delivery]:
        """A waiting reserve: RabbitMQ pushes (``basic.consume``) at most ``n`` beyond what this process holds.

        The wait is cut in slices of :data:`PUSH_SLICE` so other threads (the heartbeat) get the lock;
        an idle process sends nothing meanwhile (AMQP heartbeats aside).
        """
        deadline = time.monotonic() + timeout
        while True:
            start = time.monotonic()
            wait = min(PUSH_SLICE, max(0.0, deadline - start))
            out = self._conn.call(
                functools.partial(self._push_once, queues=queues, n=n, owner=owner, lease=lease, wait=wait)
            )
            self._publish_counts()
            now = time.monotonic()
            if out or now >= deadline or self.waits_stopped:  # stop_waiting: a stopping worker's wait ends now
                return out
            self._forgive_stall(now - start - wait)

    def _reserve_pulled(
        self, queues: Sequence[str], n: int, owner: str, lease: float, timeout: float, *, promote: bool = True
    ) -> list[Delivery]:
        """A look at what is ready now: ``basic.get`` queue by queue, in order (exact, one round trip each).

        With a wait (quorum queues only) it looks again after 2 ms, doubling to :data:`POLL_MAX`; the
        pause carries over to the next reserve until one finds something, so an idle worker, whose
        reserves each wait about a second, looks every 50 ms and not in a burst at each call.
        ``promote`` False: the ``.eta`` queues are left to the promoter thread.
        """
        deadline = time.monotonic() + timeout
        pause = self._idle_pause
        while True:
            out = self._conn.call(lambda ch: self._reserve_once(ch, queues, n, owner, lease, promote))
            self._publish_counts()
            now = time.monotonic()
            remaining = deadline - now
            if out or remaining <= 0 or self.waits_stopped:
                self._idle_pause = POLL_MIN if out else pause
                return out
            if self._next_hop < now - HOP_SLACK:  # that level ran out a while ago: back to plain polling
                self._next_hop = INF
            hop = max(0.0, self._next_hop - now) + 0.001
            nap = min(pause, remaining, hop)
            time.sleep(nap)
            self._forgive_stall(time.monotonic() - now - nap)
            pause = min(pause * 2, POLL_MAX)

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        self._ack(deliveries, shrink=True)

    def _ack(self, deliveries: Sequence[Delivery], *, shrink: bool) -> None:
        def op(ch: BlockingChannel) -> list[Meta]:
            done = self._pop_held(deliveries)
            self._ack_held(ch, done)
            if shrink:
                self._shrink_window(ch)  # before the commit (see there)
            ch.tx_commit()
            return [held.entry for held in done]

        self._release_keys(self._conn.call(op), ids=True)
        self._publish_counts()

    def _ack_held(self, ch: BlockingChannel, done: Sequence[Held]) -> None:
        """Acknowledge ``done``: those below every delivery still outstanding on the channel in one frame.

        A ``multiple`` ack settles every unacknowledged tag up to its own, so it covers only tags below
        the lowest one this process still holds or has in its inbox, and only pushed deliveries: pushes
        are dispatched in tag order, so every lower tag has been seen (held, in the inbox, or settled),
        whereas a ``basic.get-ok`` is answered at once and may overtake pushes pika has read but not
        dispatched yet, whose tags are lower. A full batch of a process-pool child is one frame instead
        of one per task (less Python here, less work in RabbitMQ); the others are acked one by one.
        """
        if not done:
            return
        rest = [held.tag for held in done]
        if all(held.pushed for held in done):
            outstanding = [h.tag for h in self._live_held()] + [p.method.delivery_tag for p in self._inbox]
            floor = min(outstanding, default=INF)
            below = [tag for tag in rest if tag < floor]
            if below:
                ch.basic_ack(max(below), multiple=True)
                rest = [tag for tag in rest if tag >= floor]
        for tag in rest:
            ch.basic_ack(tag)

    def nack(self, delivery: Delivery, *, delay: float = 0.0, body: bytes | None = None) -> None:
        self._nack([delivery], delay, body)

    def give_back(self, deliveries: Sequence[Delivery]) -> None:
        """Nack them all in one transaction: one commit (one disk write) and one window change, not one each."""
        self._nack(deliveries, 0.0, None)

    def _nack(self, deliveries: Sequence[Delivery], delay: float, body: bytes | None) -> None:
        def op(ch: BlockingChannel) -> None:
            done = self._pop_held(deliveries)
            now = time.time()
            eta = now + delay if delay > 0 else None
            for held in done:
                entry = dataclasses.replace(held.entry, eta=eta)  # same count: this delivery does not count
                self._publish(ch, held.delivery.queue, entry, held.delivery.body if body is None else body, now)
            self._ack_held(ch, done)
            if done:
                self._shrink_window(ch)  # before the commit (see there)
                ch.tx_commit()
                return
            self._shrink_window(ch)

        self._conn.call(op)
        self._publish_counts()

    def extend(self, deliveries: Sequence[Delivery], lease: float, running: Collection[str] = ()) -> list[str]:
        """Push the leases of ``deliveries``; each call is one heartbeat of this process.

        ``running`` is ignored: a redelivered copy counts a delivery here only if its STARTED result
        record shows a start (``redelivery.py``).

        A delivery this process acked, nacked or dead-lettered is not reported lost: the worker may
        heartbeat it once more while the ack's key release is still under way.
        """

        def op(ch: BlockingChannel) -> list[str]:
            self._conn.service()  # AMQP heartbeats, and a dead connection shows here
            self._beats += 1
            until = time.monotonic() + lease
            lost = []
            for d in deliveries:
                held = self._live(d)
                if held is not None:
                    held.deadline, held.beat = until, self._beats
                elif d.token not in self._settled:
                    lost.append(d.id)
            return lost

        lost = self._conn.call(op)
        self._publish_counts()
        return lost

    def dead_letter(self, delivery: Delivery, reason: str, body: bytes | None = None) -> None:
        def op(ch: BlockingChannel) -> list[Meta]:
            done = []
            for held in self._pop_held([delivery]):
                self._bury(ch, held, reason, body)
                done.append(held.entry)
            self._shrink_window(ch)  # before the commit (see there)
            ch.tx_commit()
            return done

        self._release_keys(self._conn.call(op))
        self._publish_counts()

    def release_owner(self, owner: str, running: Collection[str] | None = None) -> int:
        """Give back this process's deliveries leased to ``owner``.

        A worker child that died held its deliveries on its own connection, which the kernel closed:
        RabbitMQ requeued them already, and its redelivery counts them. So from the supervisor this
        returns 0; it moves messages only for owners inside this process. ``running`` is not used:
        RabbitMQ decides what a redelivery counts.
        """

        def op(ch: BlockingChannel) -> int:
            mine = [h for h in self._live_held() if h.delivery.owner == owner]
            for held in mine:
                held.entry = dataclasses.replace(held.entry, started=counted_start(self._store, held.entry))
                self._give_back(ch, held, f"its worker process {owner} died")
            ch.tx_commit()
            return len(mine)

        released = self._conn.call(op)
        self._board.clear(owner)
        return released

    def extend_owner(self, owner: str, lease: float) -> int:
        """Always 0: a delivery is held on the channel of the process that reserved it.

        Another process (the supervisor) cannot extend those leases; the child keeps them itself.
        """
        return 0

    def recover(self) -> int:
        def op(ch: BlockingChannel) -> int:
            moved = self._expire(ch)
            for queue in sorted(self._declared):
                moved += self._promote(ch, self._names(queue))
            if moved:  # nothing to commit otherwise: an idle supervisor's heartbeat sends RabbitMQ nothing
                ch.tx_commit()
            return moved

        return self._conn.call(op)

    # -- the reserve step, pushed ------------------------------------------------------------

    def _push_once(
        self, ch: BlockingChannel, queues: Sequence[str], n: int, owner: str, lease: float, wait: float
    ) -> list[Delivery]:
        """One slice of a waiting reserve, under the lock.

        Sets the window (``basic.qos`` global: held + ``n``), makes sure this channel consumes the
        ready queues of ``queues`` (and the promoter thread their ``.eta`` queues), waits up to ``wait``
        for a push, and hands out what came, queues in the order given. A partial batch shrinks the
        window back to what is held, so nothing waits in this process's buffer while its slots run.
        """
        self._sync_consumers()
        moved = self._expire(ch)
        if self._admin.register(ch, "owner", owner):
            self._owners.add(owner)
            self._publish_counts()
            moved += 1
        for queue in queues:
            self._declare(ch, queue)
        if moved:
            ch.tx_commit()
        self._set_window(ch, len(self._live_held()) + n)
        self._consume(ch, queues)
        self._promoter.serve(queues)
        conn = self._conn.connection
        conn.process_data_events(0)
        if not self._inbox and wait > 0:
            conn.process_data_events(wait)
        self._gather(n)
        out = self._take_inbox(ch, queues, n, owner, lease)
        if 0 < len(out) < n:
            self._shrink_window(ch, queues=queues, n=n - len(out), out=out, owner=owner, lease=lease)
        self._last_full = len(out) >= n
        return out

    def _gather(self, n: int) -> None:
        """Once pushes started arriving, read on while more come, up to ``n`` (``process_data_events``
        returns at the first delivery, and RabbitMQ's burst crosses several reads).

        A partial batch costs two ``basic.qos`` round trips (the window shrinks, and opens again at the
        next reserve), so after a full batch (a busy queue: the rest of the burst is on its way) the
        reserve waits up to :data:`GATHER` for it; otherwise it only reads what is already there.
        """
        if not self._inbox:
            return
        conn = self._conn.connection
        until = time.monotonic() + (GATHER if self._last_full else 0.0)
        while len(self._inbox) < n:
            before = len(self._inbox)
            left = until - time.monotonic()
            conn.process_data_events(max(left, 0.0))
            if len(self._inbox) == before and left <= 0:
                return

    def _before_call(self, ch: BlockingChannel, op: Callable[[BlockingChannel], object]) -> None:
        """Before any operation but a waiting reserve: a process holding nothing stops consuming.

        A waiting reserve that got nothing leaves its consumers on (a worker comes straight back, and an
        idle worker must not cancel and re-consume every second). If the process does something else
        next instead (a script, a producer), what RabbitMQ pushed meanwhile goes back first.
        """
        if (
            self._consumers
            and not (isinstance(op, functools.partial) and op.func == self._push_once)
            and self._consume_generation == self._conn.generation
            and not self._live_held()
        ):
            self._stop_consuming(ch)

    def _sync_consumers(self) -> None:
        """Forget consumers (and pushed deliveries) of an older connection: RabbitMQ requeued those."""
        generation = self._conn.generation
        if self._consume_generation != generation:
            self._consume_generation = generation
            self._consumers.clear()
            self._inbox.clear()
            self._window = 0

    def _set_window(self, ch: BlockingChannel, window: int) -> None:
        window = max(window, 1)  # 0 would mean "no limit"
        if window != self._window:
            ch.basic_qos(prefetch_count=window, global_qos=True)
            self._window = window

    def _consume(self, ch: BlockingChannel, queues: Sequence[str]) -> None:
        """Consume the ready queues of ``queues``; stop consuming the others (paused ones)."""
        for queue in queues:
            if queue not in self._consumers:
                self._consumers[queue] = ch.basic_consume(self._names(queue).ready, self._pusher(queue))
        gone = [q for q in self._consumers if q not in queues]
        if gone:
            self._cancel(ch, gone)
            self._return_inbox(ch, [p for p in self._inbox if p.queue in gone])  # back unmarked

    def _cancel(self, ch: BlockingChannel, queues: Sequence[str]) -> None:
        """Cancel the consumers of ``queues``.

        What arrived is taken into the inbox first (the caller gives it back unmarked); pika rejects with
        requeue what arrives before the cancel-ok, and a reject on a transactional channel waits for the
        commit, which follows at once.
        """
        self._conn.connection.process_data_events(0)
        for queue in queues:
            ch.basic_cancel(self._consumers.pop(queue))
        ch.tx_commit()

    def _pusher(self, queue: str) -> Callable[[BlockingChannel, Basic.Deliver, BasicProperties, bytes], None]:
        def on_message(_ch: BlockingChannel, method: Basic.Deliver, props: BasicProperties, body: bytes) -> None:
            self._inbox.append(Pushed(queue, method, props, body))

        return on_message

    def _take_inbox(
        self, ch: BlockingChannel, queues: Sequence[str], n: int, owner: str, lease: float
    ) -> list[Delivery]:
        """Hand out up to ``n`` pushed deliveries, queues in the order given (RabbitMQ orders each queue)."""
        if not self._inbox:
            return []
        order = {q: i for i, q in enumerate(queues)}
        self._inbox.sort(key=lambda p: order.get(p.queue, len(order)))  # stable: arrival order within a queue
        out: list[Delivery] = []
        rotated = False
        while self._inbox and len(out) < n and self._inbox[0].queue in order:
            pushed = self._inbox.pop(0)
            delivery = self._take(ch, pushed.queue, pushed.method, pushed.props, pushed.body, owner, lease)
            if delivery is None:
                rotated = True
            else:
                out.append(delivery)
        if rotated:
            ch.tx_commit()
        return out

    def _shrink_window(
        self,
        ch: BlockingChannel,
        *,
        queues: Sequence[str] = (),
        n: int = 0,
        out: list[Delivery] | None = None,
        owner: str = "",
        lease: float = 0.0,
    ) -> None:
        """Bring the window down to what this process holds, so nothing more is pushed while its slots are busy.

        Outside a reserve (``out`` None) with nothing held, the consumers are cancelled instead: a
        window cannot be 0, and a process that stopped reserving must not keep a message. Deliveries
        pushed before RabbitMQ applied the new window are handed out (up to ``n`` more, into ``out``)
        or, outside a reserve, given back unmarked.

        An ack, nack or dead-letter calls it *before* committing its acknowledgements: until the commit
        RabbitMQ still counts them unacknowledged, so the window stays full and it pushes nothing while
        the window shrinks or the consumers are cancelled. Committed first, they opened the window for a
        moment: RabbitMQ pushed a message (often the nacked one's own copy), and one that arrived during
        the cancel was rejected back by pika, marked redelivered, and charged a delivery it never ran if
        the result backend could not say otherwise (start_to_count).
        """
        if not self._consumers or self._consume_generation != self._conn.generation:
            return
        held = len(self._live_held())
        if out is None and held == 0:  # nothing runs and no reserve waits: stop consuming altogether
            self._stop_consuming(ch)
            return
        if self._window > max(held, 1):
            self._set_window(ch, held)
        self._conn.connection.process_data_events(0)
        if out is not None and n > 0:
            out.extend(self._take_inbox(ch, queues, n, owner, lease))
        if self._inbox:
            self._return_inbox(ch, list(self._inbox))

    def _stop_consuming(self, ch: BlockingChannel) -> None:
        """Cancel every consumer and give back what they pushed (the next waiting reserve consumes again)."""
        self._cancel(ch, list(self._consumers))
        self._return_inbox(ch, list(self._inbox))

    def _return_inbox(self, ch: BlockingChannel, pushed: list[Pushed]) -> None:
        """Give pushed, unhanded deliveries back as identical copies (a reject would mark them redelivered).

        One RabbitMQ already redelivered is counted first, exactly as a reserve taking it would.
        """
        if not pushed:
            return
        for p in pushed:
            self._inbox.remove(p)
            if p.method.redelivered:  # a copy must not lose what the flag says: count it as a reserve would
                self._recount(ch, p.queue, meta_of(p.props), p.method.delivery_tag, p.body)
                continue
            keep_unmarked(ch, self._names(p.queue).ready, p.props, p.body)
            ch.basic_ack(p.method.delivery_tag)
        ch.tx_commit()

    # -- the reserve step, pulled --------------------------------------------------------------

    def _reserve_once(
        self, ch: BlockingChannel, queues: Sequence[str], n: int, owner: str, lease: float, scan_eta: bool = True
    ) -> list[Delivery]:
        """Expire leases, promote due messages, then take up to ``n`` ready ones; one lock hold."""
        moved = self._expire(ch)
        now = time.monotonic()
        promote = scan_eta and (now >= self._next_promote or now >= self._next_hop)
        if promote:
            self._next_promote = now + PROMOTE_EVERY
        if self._admin.register(ch, "owner", owner):
            self._owners.add(owner)
            self._publish_counts()  # its record exists before its registry entry: no one takes it for dead
            moved += 1  # commit the registry entry with the rest
        for queue in queues:
            self._declare(ch, queue)
            if promote:
                moved += self._promote(ch, self._names(queue))
        if moved:
            ch.tx_commit()
        self._sync_consumers()
        out = self._take_inbox(ch, queues, n, owner, lease)
        rotated = False
        for queue in queues:
            for ready in self._names(queue).bands:  # one ready queue, or (quorum) its bands, highest first
                while len(out) < n:
                    method, props, body = ch.basic_get(ready)
                    if method is None or props is None or body is None:
                        break
                    delivery = self._take(ch, queue, method, props, body, owner, lease)
                    if delivery is None:
                        rotated = True
                    else:
                        out.append(delivery)
        if rotated:
            ch.tx_commit()
        return out

    def _take(
        self,
        ch: BlockingChannel,
        queue: str,
        method: Basic.GetOk | Basic.Deliver,
        props: BasicProperties,
        body: bytes,
        owner: str,
        lease: float,
    ) -> Delivery | None:
        """Lease one fetched message, or count a redelivery RabbitMQ made and republish it (None)."""
        entry = meta_of(props)
        if method.redelivered:
            self._recount(ch, queue, entry, method.delivery_tag, body)
            return None
        generation = self._conn.generation
        token = f"{os.getpid()}.{generation}.{method.delivery_tag}"
        delivery = Delivery(entry.id, queue, body, entry.priority, entry.before + 1, token, owner)
        deadline = time.monotonic() + lease
        pushed = isinstance(method, Basic.Deliver)
        self._held[token] = Held(delivery, entry, method.delivery_tag, generation, deadline, self._beats, pushed)
        return delivery

    def _recount(self, ch: BlockingChannel, queue: str, entry: Meta, tag: int, body: bytes) -> None:
        """Republish a copy RabbitMQ requeued after a channel holding it closed, counting a delivery only if it ran.

        The closed channel may have held it running (a crash: count it, so a message that kills its
        workers ends dead-lettered) or only prefetched (a batch-mate of the crashing task), or a
        scanning producer may have dropped mid-scan. The task's STARTED result record tells: a start
        not counted yet (its time differs from the copy's ``started`` header) counts a delivery. No
        record (not started, or ``track_started=False``/``ignore_result``) counts an uncharged requeue
        instead, and ``REQUEUES_PER_DELIVERY * max_deliveries`` of those bury it. The copy goes to the
        queue's tail, so a message that kills its workers cannot keep the head.
        """
        started = start_to_count(self._store, entry)
        if started is not None:
            counted = dataclasses.replace(entry, before=entry.before + 1, started=started)
            delivery = Delivery(entry.id, queue, body, entry.priority, counted.before, "", "")
            lost = Held(delivery, counted, tag, self._conn.generation, 0.0)
            self._give_back(ch, lost, "the connection running it closed (its worker died?)")
            return
        requeued = dataclasses.replace(entry, requeues=entry.requeues + 1)
        delivery = Delivery(entry.id, queue, body, entry.priority, entry.before, "", "")
        held = Held(delivery, requeued, tag, self._conn.generation, 0.0)
        if requeued.requeues >= REQUEUES_PER_DELIVERY * self.max_deliveries:
            why = f"requeued {requeued.requeues} times by closed connections without a recorded start; poison?"
            self._bury(ch, held, why)
            self._release_keys([entry])
            return
        ch.basic_publish("", self._names(queue).ready_for(entry.priority), body, properties(requeued))
        ch.basic_ack(tag)

    def _expire(self, ch: BlockingChannel) -> int:
        """Give back the deliveries whose lease ran out without a heartbeat.

        Once this process heartbeats (calls ``extend``), a delivery expires only if its deadline
        passed *and* ``MISSED_BEATS`` heartbeats went by without extending it: a process stalled
        whole (a task holding the GIL starves the heartbeat thread and every other thread alike)
        gives back nothing when it wakes; its heartbeat extends the leases next. A process that never
        heartbeats (a script, the conformance tests) expires by the deadline alone.
        """
        now = time.monotonic()
        due = [h for h in self._live_held() if expired(h, now, self._beats)]
        for held in due:
            held.entry = dataclasses.replace(held.entry, started=counted_start(self._store, held.entry))
            self._give_back(ch, held, "its lease expired without a heartbeat")
        return len(due)

    def _forgive_stall(self, overshoot: float) -> None:
        """Push every held lease by ``overshoot`` seconds when a reserve's sleep overran that long.

        A thread pool's idle slot polls here while a task runs on another thread; a C call holding the
        GIL stalls every thread, this one's sleep included, and the overrun measures the stall. Pushing
        a local deadline never gives a task to anyone else: it only keeps this process's claim.
        """
        if overshoot < STALL:
            return
        with self._conn.lock:
            for held in self._held.values():
                held.deadline += overshoot

    def _give_back(self, ch: BlockingChannel, held: Held, why: str) -> None:
        """Return a held message to its ready queue (its deliveries counted), or bury it as poison.

        The delivery is forgotten here, whatever the caller: one left behind would count as in
        flight, and its lease expiry would give it back a second time (a duplicate copy, and an ack
        of an already acknowledged tag, which closes the channel).
        """
        self._held.pop(held.delivery.token, None)
        d = held.delivery
        if d.deliveries >= self.max_deliveries:
            reason = f"delivered {d.deliveries} times without an acknowledgement ({why}); poison?"
            self._bury(ch, held, reason)
            self._release_keys([held.entry])
            return
        entry = dataclasses.replace(held.entry, before=d.deliveries, eta=None)
        ch.basic_publish("", self._names(d.queue).ready_for(entry.priority), d.body, properties(entry))
        ch.basic_ack(held.tag)

    def _promote(self, ch: BlockingChannel, names: QueueNames) -> int:
        """Move due messages of the ``.eta`` queue to ready, the others to their next delay level; count both."""
        now = time.time()

        def decide(method: Basic.GetOk, props: BasicProperties, body: bytes) -> bool:
            self._publish_to(ch, names, meta_of(props), body, now)
            return True

        return scan(ch, names.eta, decide)

    # -- publishing --------------------------------------------------------------------------

    def _publish(self, ch: BlockingChannel, queue: str, entry: Meta, body: bytes, now: float) -> None:
        self._publish_to(ch, self._names(queue), entry, body, now)

    def _publish_to(self, ch: BlockingChannel, names: QueueNames, entry: Meta, body: bytes, now: float) -> None:
        """Publish to the ready queue, or to the delay level that fits what remains of the eta."""
        queue, props = self._route(names, entry, now)
        ch.basic_publish("", queue, body, props)

    def _route(self, names: QueueNames, entry: Meta, now: float) -> tuple[str, BasicProperties]:
        """(RabbitMQ queue, properties) of a message: its ready queue, or the delay level that fits its eta."""
        if entry.eta is None or entry.eta <= now:
            return names.ready_for(entry.priority), properties(dataclasses.replace(entry, eta=None))
        level = level_for(entry.eta - now)
        self._next_hop = min(self._next_hop, time.monotonic() + level_ms(level) / 1000)
        return names.levels[level], properties(entry)

    def _bury(self, ch: BlockingChannel, held: Held, reason: str, body: bytes | None = None) -> None:
        d = held.delivery
        props = dead_properties(held.entry, d.deliveries, reason)
        ch.basic_publish("", self._names(d.queue).dead, d.body if body is None else body, props)
        ch.basic_ack(held.tag)

    def _names(self, queue: str) -> QueueNames:
        """The RabbitMQ queues of ``queue`` (on quorum queues, a ready queue per priority band)."""
        return queue_names(self.prefix, queue, self.queue_type == "quorum")

    def _declare(self, ch: BlockingChannel, queue: str) -> None:
        """Declare a conveyor queue's topology and register its name, once per process."""
        if queue in self._declared:
            return
        registry = (self._admin.registry, self._admin.registry_args)
        for name, arguments in [registry, *declarations(self._names(queue), self.queue_type)]:
            try:
                ch.queue_declare(name, durable=True, arguments=arguments)
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code != 406 or "x-queue-type" not in exc.reply_text:
                    raise
                self._conn.drop()  # the channel is closed; the next call opens a new one
                other = "classic" if self.queue_type == "quorum" else "quorum"
                raise ConfigurationError(
                    f"RabbitMQ queue {name!r} exists as a {other} queue and this broker's URL asks for "
                    f"{self.queue_type} queues (RabbitMQ cannot change a queue's type): drain it and delete "
                    f"the queues of conveyor queue {queue!r} (prefix {self.prefix!r}) to switch, or use "
                    f"queue_type={other} (or another prefix=); RabbitMQ said: {exc.reply_text}"
                ) from exc
        add_to_registry(ch, self._admin.registry, "queue", queue)
        ch.tx_commit()
        self._declared.add(queue)

    # -- held deliveries ---------------------------------------------------------------------

    def _live_held(self) -> list[Held]:
        """Held deliveries of the current channel; those of a closed one are dropped (RabbitMQ requeued them)."""
        generation = self._conn.generation
        for token in [t for t, h in self._held.items() if h.generation != generation]:
            del self._held[token]
        return list(self._held.values())

    def _live(self, delivery: Delivery) -> Held | None:
        held = self._held.get(delivery.token)
        if held is None or held.generation != self._conn.generation:
            return None
        return held

    def _pop_held(self, deliveries: Sequence[Delivery]) -> list[Held]:
        """Take the still-held ones of ``deliveries`` out of the held set to settle them (stale ones are ignored).

        Their tokens are remembered as settled, so a heartbeat racing the settlement does not report them lost.
        """
        out = []
        for d in deliveries:
            held = self._live(d)
            if held is not None:
                del self._held[d.token]
                out.append(held)
                self._settled[d.token] = None
        while len(self._settled) > SETTLED_KEEP:
            del self._settled[next(iter(self._settled))]
        return out

    def _forget_parent(self) -> None:
        """In a forked child: the parent's deliveries, owners and in-flight records are the parent's."""
        self._held.clear()
        self._settled.clear()
        self._beats = 0
        self._owners.clear()
        self._board = InFlightBoard(self._store, self.prefix)
        self._next_hop = INF

    def _owner_counts(self) -> Counts:
        """In-flight per owner and queue of this process (the caller holds the lock, or takes it here)."""
        counts: Counts = {}
        with self._conn.lock:
            for held in self._live_held():
                per_queue = counts.setdefault(held.delivery.owner, {})
                per_queue[held.delivery.queue] = per_queue.get(held.delivery.queue, 0) + 1
        return counts

    def _publish_counts(self, force: bool = False) -> None:
        """Write the in-flight counts ``stats()`` reads; best effort, never at the cost of a delivery.

        The counts live in the result backend. When it does not answer, the messages a ``reserve``
        already took must still reach the caller (raising would leave them held here, unknown to the
        worker, until their lease counted a delivery: issue 11, item 3), so the failure is logged and
        the counts are written again once the backend answers, after :data:`COUNTS_RETRY` seconds.
        Meanwhile ``stats()`` may show this process's in-flight figures late.
        """
        now = time.monotonic()
        if now < self._counts_paused_until and not force:
            return
        try:
            self._board.publish(self._owner_counts(), self._owners, force=force)
        except BrokerError as exc:
            if not self._counts_paused_until:
                log.warning("could not record in-flight counts in the result backend (stats lag): %s", exc)
            self._counts_paused_until = now + COUNTS_RETRY
            return
        self._counts_paused_until = 0.0

    def _release_keys(self, entries: Sequence[Meta], *, ids: bool = False) -> None:
        """Free the idempotency keys of finished messages, and (``ids``) the explicit ids of those that left.

        No backend call when none has a key or an explicit id.
        """
        self._keys.release([c for e in entries for c in claims_of(e.key, e.id, e.explicit, ids=ids)])

    # -- dead letters, cancel, purge (scans: see admin.py) --------------------------

    def dead_letters(self, limit: int = 100, queue: str | None = None) -> list[DeadLetter]:
        return self._admin.dead_letters(limit, queue)

    def requeue_dead(self, ids: Sequence[str] | None = None) -> int:
        return self._admin.requeue_dead(ids)

    def purge_dead(self, ids: Sequence[str] | None = None) -> int:
        removed = self._admin.purge_dead(ids)
        self._release_keys(removed, ids=True)
        return len(removed)

    def cancel(self, ids: Sequence[str]) -> list[str]:
        gone, removed = self._admin.cancel(ids)
        self._release_keys(removed, ids=True)
        return gone

    def purge(self, queue: str) -> int:
        removed = self._admin.purge(queue)
        self._release_keys(removed, ids=True)
        return len(removed)

    # -- observability -----------------------------------------------------------------------

    def stats(self) -> list[QueueStats]:
        """Ready, scheduled and dead from RabbitMQ; in flight from every owner's record (see inflight.py)."""

        def op(ch: BlockingChannel) -> tuple[list[tuple[str, int, int, int]], list[str], Counts]:
            queues, owners = self._admin.entries_locked(ch)
            rows = []
            for queue in queues:
                self._declare(ch, queue)
                rows.append((queue, *self._admin.counts(ch, queue)))
            return rows, owners, self._owner_counts()

        rows, owners, mine = self._conn.call(op)
        in_flight, stale = self._board.totals(owners, skip=self._owners)
        for counts in mine.values():
            add(in_flight, counts)
        self._admin.forget([("owner", o) for o in stale])
        return [QueueStats(q, ready, scheduled, in_flight.get(q, 0), dead) for q, ready, scheduled, dead in rows]

    def register_worker(self, info: WorkerInfo, ttl: float) -> None:
        self._admin.register_worker(info, ttl)

    def unregister_worker(self, worker_id: str) -> None:
        self._admin.unregister_worker(worker_id)

    def workers(self) -> list[WorkerInfo]:
        return self._admin.workers()

    def ping(self) -> None:
        self._conn.call(lambda ch: None)  # opens the connection and the channel: host, port, credentials, vhost

    def close(self) -> None:
        self._promoter.stop()
        with self._conn.lock:
            if self._consumers and self._consume_generation == self._conn.generation:
                with contextlib.suppress(Exception):  # best effort: a closing connection requeues them anyway
                    self._conn.call(self._stop_consuming)
            self._held.clear()  # the channel closes: RabbitMQ requeues them
        self._publish_counts(force=True)
        self._conn.drop()
