"""Publisher confirms on RabbitMQ: a connection lost between a publish and its confirm is never silent.

The fault is real: the producer talks to RabbitMQ through a TCP relay of this test, which first stops
passing RabbitMQ's bytes back (the confirm is held) and then cuts both sockets.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from conveyor.backends.memory import MemoryResultBackend
from conveyor.brokers import Envelope
from conveyor.brokers.amqp import AMQPBroker
from conveyor.errors import BrokerUnavailable
from tests.conftest import wait_until
from tests.vhosts import rabbitmqctl


def env(body: bytes = b"x") -> Envelope:
    return Envelope(id=uuid.uuid4().hex, queue="default", body=body, explicit_id=False)


class Relay:
    """A TCP relay to ``target``: :meth:`hold_replies` drops what the server sends, :meth:`cut` closes everything."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.holding = threading.Event()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                server = socket.create_connection(self.target, timeout=5)
                server.settimeout(None)
                self.sockets += [client, server]
                threading.Thread(target=self._pump, args=(client, server, None), daemon=True).start()
                threading.Thread(target=self._pump, args=(server, client, self.holding), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, hold: threading.Event | None) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if hold is None or not hold.is_set():
                    dst.sendall(data)

    def hold_replies(self) -> None:
        self.holding.set()

    def cut(self) -> None:
        for sock in [self.listener, *self.sockets]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


@pytest.fixture
def relay(amqp_test_url: str) -> Iterator[Relay]:
    parts = urlsplit(amqp_test_url)
    made = Relay((parts.hostname or "127.0.0.1", parts.port or 5672))
    yield made
    made.cut()


def through(url: str, relay: Relay) -> str:
    parts = urlsplit(url)
    credentials = parts.netloc.rsplit("@", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{credentials}@127.0.0.1:{relay.port}"))


def test_a_connection_lost_before_the_confirm_raises_broker_unavailable(amqp_test_url: str, relay: Relay) -> None:
    # Given a producer whose connection, queues and confirm channel are up (through the relay)
    producer = AMQPBroker.from_url(through(amqp_test_url, relay), store=MemoryResultBackend())
    direct = AMQPBroker.from_url(amqp_test_url, store=MemoryResultBackend())
    try:
        producer.enqueue([env(b"first")])
        # When RabbitMQ's confirm of the next publish never comes back, and the connection then drops
        relay.hold_replies()
        threading.Timer(0.5, relay.cut).start()
        started = time.monotonic()
        # Then the send raises BrokerUnavailable (nothing is retried behind the caller's back)
        with pytest.raises(BrokerUnavailable, match="before it confirmed 1 message"):
            producer.enqueue([env(b"second")])
        assert time.monotonic() - started < 10
        # And the message did reach RabbitMQ: its fate was unknown, not lost (the caller may send it again)
        wait_until(lambda: direct.stats()[0].ready == 2, 10, "both messages in the ready queue")
    finally:
        producer.close()
        direct.close()


def test_a_batch_is_confirmed_as_a_whole(amqp_test_url: str) -> None:
    # Given a producer
    producer = AMQPBroker.from_url(amqp_test_url, store=MemoryResultBackend())
    try:
        # When it sends 500 messages in one batch
        ids = producer.enqueue([env(str(i).encode()) for i in range(500)])
        # Then every one of them is in RabbitMQ once enqueue returns (all confirmed), in order
        assert producer.stats()[0].ready == 500
        got = producer.reserve(["default"], 500, owner="w", lease=30)
        assert [d.id for d in got] == ids
        producer.ack(got)
    finally:
        producer.close()


def test_a_nacked_publish_raises_broker_unavailable(amqp_test_url: str, amqp_vhost: str) -> None:
    # Given a queue that RabbitMQ refuses to take messages into (a policy: max length 0, reject-publish)
    producer = AMQPBroker.from_url(amqp_test_url, store=MemoryResultBackend())
    policy = f"cvtest-nack-{uuid.uuid4().hex[:8]}"
    pattern = f"^{re.escape(producer.prefix)}\\.q\\.full$"
    definition = '{"max-length": 0, "overflow": "reject-publish"}'
    rabbitmqctl("set_policy", "-p", amqp_vhost, "--apply-to", "queues", policy, pattern, definition)
    try:
        producer.enqueue([env()])  # the default queue takes it
        # When a message is sent to the full queue, Then RabbitMQ's nack reaches the caller
        with pytest.raises(BrokerUnavailable, match="nacked 1 message"):
            producer.enqueue([Envelope(id=uuid.uuid4().hex, queue="full", body=b"x", explicit_id=False)])
        # And the producer goes on working
        producer.enqueue([env()])
        assert producer.stats()[0].ready == 2
    finally:
        rabbitmqctl("clear_policy", "-p", amqp_vhost, policy)
        producer.close()
