"""Walking a RabbitMQ queue inside one transaction: the AMQP broker's way to look at single messages.

AMQP 0-9-1 can neither list a queue nor delete one message in it. :func:`scan` takes every message a
queue holds right now with ``basic.get`` (at most the count the first ``get-ok`` reports, so
messages published meanwhile are left for later) and lets a callback decide each one: *take* it
(acknowledged: deleted, or moved once the callback published a copy) or *keep* it
(``basic.reject`` with requeue, which RabbitMQ applies at ``tx.commit`` and which puts the message
back in its original position). The caller commits. cancel, dead-letter listing, requeue and
purge, and the registry are built on it; each costs one round trip per message in the queue, so
they suit queues of thousands, not millions (docs/amqp.md).

The registry queue holds one persistent message per known conveyor queue and per worker id (a
header says which), because AMQP cannot list queues either. Writers only append; a reader drops
duplicates and entries it was asked to forget.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Collection
from typing import Any

import pika
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic, BasicProperties

from conveyor.brokers.amqp.names import (
    H_DEAD_AT,
    H_DELIVERIES,
    H_ETA,
    H_EXPLICIT,
    H_KEY,
    H_KIND,
    H_REASON,
    H_REQUEUES,
    H_STARTED,
)
from conveyor.brokers.base import DeadLetter

#: delivery_mode of a persistent message.
PERSISTENT = pika.DeliveryMode.Persistent

#: A scan callback: (method, properties, body) -> True to take the message, False to keep it.
Decide = Callable[[Basic.GetOk, BasicProperties, bytes], bool]


@dataclasses.dataclass(frozen=True, slots=True)
class Meta:
    """What the broker tracks of one message copy (id, priority, counts, eta, key), in its AMQP properties and headers.

    Called ``entry`` where it is used; named ``Meta`` so it is not mistaken for the scheduler's ``Entry``.
    """

    id: str
    priority: int
    before: int  # deliveries before this copy
    eta: float | None = None
    key: str | None = None
    started: float | None = None  # the task start a crash was already counted for (see AMQPBroker._recount)
    requeues: int = 0  # uncounted requeues after crashes (the task had not started)
    explicit: bool = False  # the id was the sender's (task_id=): it holds an id claim (see claims.py)


def meta_of(props: BasicProperties) -> Meta:
    """Read a message's identity from its properties (tolerant of foreign publishers)."""
    headers: dict[str, Any] = props.headers or {}
    eta = headers.get(H_ETA)
    key = headers.get(H_KEY)
    started = headers.get(H_STARTED)
    return Meta(
        id=str(props.message_id or ""),
        priority=int(props.priority or 0),
        before=int(headers.get(H_DELIVERIES, 0)),
        eta=None if eta is None else float(_text(eta)),
        key=None if key is None else _text(key),
        started=None if started is None else float(_text(started)),
        requeues=int(headers.get(H_REQUEUES, 0)),
        explicit=bool(headers.get(H_EXPLICIT, 0)),
    )


def properties(entry: Meta, extra: dict[str, Any] | None = None) -> BasicProperties:
    """Persistent properties carrying ``entry`` (plus ``extra`` headers)."""
    headers: dict[str, Any] = {H_DELIVERIES: entry.before}
    if entry.eta is not None:
        headers[H_ETA] = repr(float(entry.eta))
    if entry.key is not None:
        headers[H_KEY] = entry.key
    if entry.started is not None:
        headers[H_STARTED] = repr(float(entry.started))
    if entry.requeues:
        headers[H_REQUEUES] = entry.requeues
    if entry.explicit:
        headers[H_EXPLICIT] = 1
    headers.update(extra or {})
    return BasicProperties(message_id=entry.id, priority=entry.priority, delivery_mode=PERSISTENT, headers=headers)


def scan(ch: BlockingChannel, queue: str, decide: Decide) -> int:
    """Offer every message ``queue`` holds now to ``decide``; return how many it took.

    Taken messages are acked, kept ones rejected with requeue; both take effect at the caller's commit.
    """
    taken = 0
    left: int | None = None  # messages behind the first one, as its get-ok counted them
    while left is None or left > 0:
        method, props, body = ch.basic_get(queue)
        if method is None or props is None or body is None:
            break
        left = method.message_count if left is None else left - 1
        if decide(method, props, body):
            ch.basic_ack(method.delivery_tag)
            taken += 1
        else:
            ch.basic_reject(method.delivery_tag, requeue=True)
    return taken


def keep_unmarked(ch: BlockingChannel, queue: str, props: BasicProperties, body: bytes) -> None:
    """Keep a scanned ready message by publishing an identical copy (the caller then acks the original).

    A ``basic.reject`` with requeue would keep its place but mark it ``redelivered``, which the
    reserving worker cannot tell from a copy requeued because the connection running it closed. The
    copy carries the same id, priority and delivery count, and lands at commit, behind messages
    published while the scan ran (the kept messages keep their order among themselves).
    """
    ch.basic_publish("", queue, body, props)


def dead_letter_of(queue: str, props: BasicProperties, body: bytes) -> DeadLetter:
    """A dead letter as the contract describes it, from a message of a ``.dead`` queue."""
    entry = meta_of(props)
    headers: dict[str, Any] = props.headers or {}
    return DeadLetter(
        id=entry.id,
        queue=queue,
        body=body,
        reason=_text(headers.get(H_REASON, "")),
        dead_at=float(_text(headers.get(H_DEAD_AT, "0"))),
        deliveries=entry.before,
    )


def dead_properties(entry: Meta, deliveries: int, reason: str) -> BasicProperties:
    """Properties of a dead letter: the entry (its key dropped) plus why, when and after how many deliveries."""
    dead = dataclasses.replace(entry, before=deliveries, eta=None, key=None)
    return properties(dead, {H_REASON: reason, H_DEAD_AT: repr(time.time())})


def read_registry(
    ch: BlockingChannel, registry: str, forget: Collection[tuple[str, str]] = ()
) -> list[tuple[str, str]]:
    """The (kind, name) entries of the registry, deduplicated; entries in ``forget`` are deleted."""
    seen: list[tuple[str, str]] = []

    def decide(method: Basic.GetOk, props: BasicProperties, body: bytes) -> bool:
        kind = _text((props.headers or {}).get(H_KIND, ""))
        entry = (kind, body.decode("utf-8", "replace"))
        if entry in seen or entry in forget:
            return True
        seen.append(entry)
        return False

    scan(ch, registry, decide)
    return seen


def add_to_registry(ch: BlockingChannel, registry: str, kind: str, name: str) -> None:
    """Append an entry (in the caller's transaction)."""
    props = BasicProperties(delivery_mode=PERSISTENT, headers={H_KIND: kind})
    ch.basic_publish("", registry, name.encode(), props)


def _text(value: object) -> str:
    """A header value as text (pika hands long strings back as bytes)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
