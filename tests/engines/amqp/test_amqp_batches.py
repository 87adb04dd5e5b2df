"""Batches on RabbitMQ: an enqueued batch is one transaction, stored whole, in order, when ``enqueue``
returns; an acked batch settles exactly its own deliveries (one ``multiple`` ack where it may)."""

from __future__ import annotations

import time
import uuid

import pytest

from conveyor.backends.memory import MemoryResultBackend
from conveyor.brokers import Delivery, Envelope
from conveyor.brokers.amqp import AMQPBroker


def env(body: bytes = b"x") -> Envelope:
    return Envelope(id=uuid.uuid4().hex, queue="default", body=body, explicit_id=False)


def test_a_batch_is_stored_as_a_whole(amqp_test_url: str) -> None:
    # Given a producer
    producer = AMQPBroker.from_url(amqp_test_url, store=MemoryResultBackend())
    try:
        # When it sends 500 messages in one batch
        ids = producer.enqueue([env(str(i).encode()) for i in range(500)])
        # Then every one of them is in RabbitMQ once enqueue returns (tx.commit-ok), in order
        assert producer.stats()[0].ready == 500
        got = producer.reserve(["default"], 500, owner="w", lease=30)
        assert [d.id for d in got] == ids
        producer.ack(got)
    finally:
        producer.close()


def reserve_all(broker: AMQPBroker, n: int, pushed: bool) -> list[Delivery]:
    """Reserve ``n`` messages pushed to a consumer (a waiting reserve) or fetched (``basic.get``)."""
    taken: list[Delivery] = []
    deadline = time.monotonic() + 10
    while len(taken) < n and time.monotonic() < deadline:
        taken += broker.reserve(["default"], n - len(taken), owner="w", lease=30, timeout=1 if pushed else 0)
    return taken


@pytest.mark.parametrize("pushed", [True, False], ids=["pushed", "fetched"])
def test_acks_settle_only_their_own_deliveries(amqp_test_url: str, pushed: bool) -> None:
    # Given a worker holding six messages (a batch is acked in one multiple ack when nothing below is held)
    producer = AMQPBroker.from_url(amqp_test_url, store=MemoryResultBackend())
    worker = AMQPBroker.from_url(amqp_test_url, store=MemoryResultBackend())
    try:
        producer.enqueue([env(str(i).encode()) for i in range(6)])
        taken = reserve_all(worker, 6, pushed)
        assert [d.body for d in taken] == [str(i).encode() for i in range(6)]
        # When it acks the third and fourth (the first two still held), then the sixth, then the first
        worker.ack(taken[2:4])
        worker.ack(taken[5:])
        worker.ack(taken[:1])
        # Then the second and fifth alone were still unacknowledged: the worker's connection closing returns them
        worker.close()
        back: list[Delivery] = []
        deadline = time.monotonic() + 10
        while len(back) < 2 and time.monotonic() < deadline:  # a redelivered copy takes one more look
            back += producer.reserve(["default"], 6, owner="o", lease=30)
        time.sleep(0.2)
        back += producer.reserve(["default"], 6, owner="o", lease=30)
        assert sorted(d.body for d in back) == [b"1", b"4"]
        producer.ack(back)
    finally:
        worker.close()
        producer.close()


def test_bodies_of_every_size_arrive_whole_in_one_batch(amqp_test_url: str) -> None:
    # Given a producer (enqueue writes a batch's frames itself, bodies cut at the connection's frame size)
    producer = AMQPBroker.from_url(amqp_test_url, store=MemoryResultBackend())
    try:
        big = bytes(range(256)) * 1600  # 409,600 bytes: four body frames at RabbitMQ's default frame_max
        bodies = [b"", b"x", big, b"y" * 131_064, b"z" * 131_065, b"tail"]
        # When one batch carries an empty body, small ones, and bodies around and over one frame
        ids = producer.enqueue([env(body) for body in bodies])
        # Then each arrives whole, in order
        got = producer.reserve(["default"], 10, owner="w", lease=30)
        assert [d.id for d in got] == ids
        assert [d.body for d in got] == bodies
        producer.ack(got)
    finally:
        producer.close()
