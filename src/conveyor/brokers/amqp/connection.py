"""One RabbitMQ connection per process for the AMQP broker: a lock, bounded retries, fork safety.

pika's ``BlockingConnection`` is not thread-safe, and an AMQP acknowledgement must go on the
channel that received the delivery, so every operation of a process goes through one connection
under one lock (:meth:`AMQPConnection.call`). Its one channel is transactional (``tx.select``): the
ready queues' consumers, enqueued batches, and every "publish a copy, acknowledge the original" step
(``tx.commit-ok`` makes both land together). (The ``.eta`` queues are consumed on a connection of
their own: promoter.py.) A channel that fails takes the connection with it, so one generation number
tells which deliveries are still held.

A connection or channel that fails is dropped and reopened with backoff for at most ``retry_for``
seconds, then :class:`~conveyor.errors.BrokerUnavailable` is raised. Each (re)opening starts a new
*generation*: RabbitMQ requeued every delivery the old channel held, so deliveries of an older
generation are lost leases. A process forked from one holding a connection opens its own and never
touches the inherited socket.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import pika
import pika.exceptions
from pika import frame, spec
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.spec import BasicProperties

from conveyor.errors import BrokerError, BrokerUnavailable

T = TypeVar("T")

#: Errors after which the connection is reopened and the operation retried.
RETRYABLE = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.ConnectionWrongStateError,
    pika.exceptions.ChannelWrongStateError,
    ConnectionError,
    OSError,
)


class AMQPConnection:
    """The process's connection and transactional channel, used under :attr:`lock`.

    Args:
        url: a pika URL (``amqp://user:pass@host:port/vhost?heartbeat=...``), without ``prefix``.
        printable: the URL without its password, for error messages.
        retry_for: seconds an operation keeps retrying connection faults before BrokerUnavailable.
        connect_timeout: seconds to open the TCP connection and the AMQP handshake.
        on_fork: called (under the lock) the first time a forked child uses the connection, to drop
            the state the parent kept about its own deliveries.
    """

    def __init__(
        self,
        url: str,
        printable: str,
        *,
        retry_for: float,
        connect_timeout: float,
        on_fork: Callable[[], None] | None = None,
    ) -> None:
        self.params = pika.URLParameters(url)
        self.params.connection_attempts = 1
        self.params.socket_timeout = connect_timeout
        self.params.stack_timeout = connect_timeout * 2
        if self.params.blocked_connection_timeout is None:  # a broker out of memory or disk blocks publishers
            self.params.blocked_connection_timeout = retry_for
        self.printable = printable
        self.retry_for = retry_for
        self.lock = threading.RLock()
        #: Bumped each time a channel is opened; deliveries of an older generation are lost.
        self.generation = 0
        self._conn: BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._pid = 0
        self._on_fork = on_fork
        #: Called under the lock before each operation, with the channel and the operation.
        self.before_call: Callable[[BlockingChannel, Callable[[BlockingChannel], Any]], None] | None = None

    def call(self, op: Callable[[BlockingChannel], T], retry: Callable[[], bool] | None = None) -> T:
        """Run ``op`` on the channel under the lock, reopening and retrying after connection faults.

        ``op`` must be safe to run again after a fault: it re-reads :attr:`generation`. With
        ``retry``, a fault is retried only while ``retry()`` is true; otherwise it propagates
        (the connection already dropped).

        Raises:
            BrokerUnavailable: RabbitMQ did not answer within ``retry_for`` seconds.
            BrokerError: RabbitMQ refused the operation (it closed the channel with an error).
        """
        deadline = time.monotonic() + self.retry_for
        delay = 0.0
        with self.lock:
            while True:
                try:
                    channel = self._open()
                    if self.before_call is not None:
                        self.before_call(channel, op)
                    return op(channel)
                except pika.exceptions.ChannelClosedByBroker as exc:
                    self.drop()
                    raise BrokerError(
                        f"RabbitMQ at {self.printable} refused: {exc.reply_code} {exc.reply_text}"
                    ) from exc
                except RETRYABLE as exc:
                    self.drop()
                    if retry is not None and not retry():
                        raise
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise BrokerUnavailable(
                            f"RabbitMQ at {self.printable} did not answer within {self.retry_for:g} s: "
                            f"{type(exc).__name__}: {exc}"
                        ) from exc
                    time.sleep(min(delay, remaining))
                    delay = min(max(delay * 2, 0.05), 1.0)

    def service(self) -> None:
        """Answer RabbitMQ's heartbeats now (the LeaseKeeper calls this through ``extend``)."""
        with self.lock:
            if self._conn is not None and self._pid == os.getpid() and self._conn.is_open:
                try:
                    self._conn.process_data_events(0)
                except RETRYABLE:
                    self.drop()

    def drop(self) -> None:
        """Forget the connection (closing it if this process opened it); the next call opens a new one."""
        with self.lock:
            conn, self._conn, self._channel = self._conn, None, None
            if conn is not None and self._pid == os.getpid():
                with contextlib.suppress(Exception):  # it is being thrown away either way
                    conn.close()
            self.generation += 1

    def _open(self) -> BlockingChannel:
        if self._pid != os.getpid():  # forked: the connection belongs to the parent
            if self._conn is not None:
                _abandon(self._conn)
            if self._pid and self._on_fork is not None:
                self._on_fork()
            self._conn = self._channel = None
            self._pid = os.getpid()
            self.generation += 1
        if self._channel is None or not self._channel.is_open:
            if self._conn is not None:  # every channel goes with the connection: one generation for all
                self.drop()
            self._conn = BlockingConnection(self.params)
            self._channel = self._conn.channel()
            self._channel.tx_select()
            self.generation += 1
        return self._channel

    def queue_publishes(self, ch: BlockingChannel, publishes: Sequence[tuple[str, BasicProperties, bytes]]) -> None:
        """Queue a ``basic.publish`` to the default exchange of each (queue, properties, body) as one write.

        Call inside :meth:`call`, followed by a synchronous method (``tx_commit``), which sends them and
        waits. pika's blocking ``basic_publish`` writes each message at once as three frames (three
        ``send`` calls) and turns its I/O loop: for one ``delay()`` that was four writes and two turns
        with the commit, now two writes and one turn. The frames are pika's own classes (``pika.frame``,
        bodies cut at the connection's frame size as pika cuts them); the internals used are the blocking
        connection's ``_impl`` and its ``_body_max_length`` and ``_output_marshaled_frames``, which
        buffers the bytes as pika's ``basic_publish`` does (a closed connection drops them, and the
        commit then fails and the call retries).
        """
        if not publishes:
            return
        if not ch.is_open:
            raise pika.exceptions.ChannelWrongStateError("Channel is closed.")
        impl = self.connection._impl
        number, most = ch.channel_number, impl._body_max_length
        frames = []
        for queue, props, body in publishes:
            frames.append(frame.Method(number, spec.Basic.Publish(exchange="", routing_key=queue)).marshal())
            frames.append(frame.Header(number, len(body), props).marshal())
            frames.extend(frame.Body(number, body[at : at + most]).marshal() for at in range(0, len(body), most))
        impl._output_marshaled_frames([b"".join(frames)])

    @property
    def connection(self) -> BlockingConnection:
        """The open connection (call inside :meth:`call` only)."""
        assert self._conn is not None
        return self._conn


#: Connections inherited across ``fork()``. They stay referenced so their finalizers never run in the
#: child: the I/O loop's poller is shared with the parent, and tearing it down would unregister the
#: parent's sockets.
_INHERITED: list[BlockingConnection] = []


def _abandon(conn: BlockingConnection) -> None:
    """Let go of a connection inherited from the parent without a word on the wire.

    Only the child's copy of the TCP socket is closed (no shutdown, so the parent's connection is
    untouched), which lets RabbitMQ see the connection close when the parent dies even if this child
    lives on. pika has no public way to reach the socket; if a future pika moves it, the child simply
    keeps its copy open.
    """
    _INHERITED.append(conn)
    sock = getattr(getattr(getattr(conn, "_impl", None), "_transport", None), "_sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()
