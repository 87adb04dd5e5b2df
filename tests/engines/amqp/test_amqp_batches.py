"""An enqueued batch on RabbitMQ is one transaction: stored whole, in order, when ``enqueue`` returns."""

from __future__ import annotations

import uuid

from conveyor.backends.memory import MemoryResultBackend
from conveyor.brokers import Envelope
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
