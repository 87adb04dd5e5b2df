"""First publishes to a quorum queue: on a confirm channel, sent again while the queue rejects them.

RabbitMQ 3.10 answers the ``queue.declare`` of a quorum queue that another connection is creating at
that moment with declare-ok at once, before the queue's Raft member runs. The queue rejects a
message published then; a transactional channel is not told (``tx.commit-ok`` comes all the same, and
the message is gone), a confirm channel gets a ``basic.nack``. A worker and a producer that start
together on a new conveyor queue declare it together (CI lost a first task so; the test stops a queue's
Raft member for the moment: tests/engines/amqp/test_quorum.py). So the first message this process sends to each
quorum queue goes through a confirm channel, again after each nack until ``retry_for`` runs out;
once one is confirmed the queue runs, and the broker's transactional channel serves it from then on.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from conveyor.errors import BrokerUnavailable

#: Seconds before a rejected first publish is sent again (doubling up to :data:`MAX_PAUSE`).
FIRST_PAUSE, MAX_PAUSE = 0.01, 0.5


def publish_confirmed(
    connection: BlockingConnection, sends: list[tuple[str, Callable[[BlockingChannel], None]]], retry_for: float
) -> None:
    """Run each ``(queue, send)`` on a confirm channel of ``connection`` until RabbitMQ confirms it.

    Raises:
        BrokerUnavailable: a queue still rejected its message after ``retry_for`` seconds.
    """
    ch = connection.channel()
    try:
        ch.confirm_delivery()
        for queue, send in sends:
            deadline = time.monotonic() + retry_for
            pause = FIRST_PAUSE
            while True:
                try:
                    send(ch)
                    break
                except pika.exceptions.NackError as exc:
                    if time.monotonic() + pause > deadline:
                        raise BrokerUnavailable(
                            f"RabbitMQ quorum queue {queue!r} rejected a message for {retry_for:g} s (not running?)"
                        ) from exc
                    time.sleep(pause)
                    pause = min(pause * 2, MAX_PAUSE)
    finally:
        if ch.is_open:
            with contextlib.suppress(pika.exceptions.AMQPError):
                ch.close()
