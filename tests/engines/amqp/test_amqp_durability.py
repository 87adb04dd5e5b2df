"""Once ``enqueue`` returns, the message survives a crash of RabbitMQ itself (kill -9 of its Erlang VM).

On a private node (tests/rabbitmq_server.py): the shared one is never killed. Run for the server's default
classic queues (version 1 on RabbitMQ 3.10: each commit waits for an fsync) and for version-2 classic
queues (a ``queue-version`` policy; on 3.10 a commit waits for the write to the operating system, not for
an fsync: docs/amqp.md, "What one delay() waits for"). A kill -9 of the VM leaves the operating system's
page cache alone, so both must keep every message; a power loss is what only the first survives, which
no test here can cause.
"""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest

from conveyor.backends.memory import MemoryResultBackend
from conveyor.brokers import Delivery, Envelope
from conveyor.brokers.amqp import AMQPBroker
from tests.rabbitmq_server import private_rabbitmq
from tests.vhosts import CALL_TIMEOUT


def env(body: bytes) -> Envelope:
    return Envelope(id=uuid.uuid4().hex, queue="default", body=body, explicit_id=False)


@pytest.mark.slow
@pytest.mark.timeout(300)  # two boots of a private node on a loaded machine
@pytest.mark.parametrize("queue_version", [None, 2], ids=["server-default", "queue-version-2"])
def test_every_enqueue_that_returned_survives_a_kill_9_of_rabbitmq(queue_version: int | None) -> None:
    with private_rabbitmq() as node:
        if queue_version is not None:
            policy = json.dumps({"queue-version": queue_version})
            node.ctl("set_policy", "--apply-to", "queues", "queue-version", ".*", policy)
        url = node.url + "?prefix=cvtest-crash"
        producer = AMQPBroker.from_url(url, store=MemoryResultBackend())
        # Given 200 messages enqueued one at a time (as 200 delay() calls), each call returned
        ids = [producer.enqueue([env(str(i).encode())])[0] for i in range(200)]
        if queue_version is not None:  # the policy applies to conveyor's queues
            listed = subprocess.run(
                ["rabbitmqctl", "-q", "-n", node.node, "list_queues", "name", "policy", "--no-table-headers"],
                check=True,
                capture_output=True,
                text=True,
                timeout=CALL_TIMEOUT,
            ).stdout
            assert "cvtest-crash.q.default\tqueue-version" in listed
        # When RabbitMQ's VM is killed right after the last one returned, and the node boots again
        node.kill()
        producer.close()
        node.start()
        consumer = AMQPBroker.from_url(url, store=MemoryResultBackend())
        try:
            # Then every message is there, in the order sent (RabbitMQ marks what it recovered after a crash
            # redelivered, so the first look republishes each as an uncharged copy and the next one takes them)
            assert consumer.stats()[0].ready == 200
            got: list[Delivery] = []
            for _ in range(3):
                got += consumer.reserve(["default"], 250 - len(got), owner="w", lease=30)
            assert [d.id for d in got] == ids
            assert [d.body for d in got] == [str(i).encode() for i in range(200)]
            consumer.ack(got)
        finally:
            consumer.close()
