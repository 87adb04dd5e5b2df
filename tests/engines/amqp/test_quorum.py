"""RabbitMQ quorum queues (``queue_type=quorum`` in the URL): the broker and executor conformance suites on them.

The conformance suites' tests are imported here and run with a quorum URL (``url_for("amqp-quorum")``:
the test's vhost and prefix plus ``queue_type=quorum``); ``broker_kind`` stays ``"amqp"`` so their
RabbitMQ branches apply. One conformance test does not hold on 3.10 quorum queues, which have no
priorities: ``test_priority_first_then_fifo`` is replaced by the test that priorities are FIFO there
(docs/amqp.md, "Quorum queues"). The kill -9 worker tests are in tests/e2e/test_quorum_worker.py.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pika
import pika.exceptions
import pytest

from conveyor.backends import from_url as backend_from_url
from conveyor.brokers import Broker, Envelope
from conveyor.brokers import from_url as broker_from_url
from conveyor.brokers.amqp import AMQPBroker
from conveyor.brokers.amqp.names import queue_names
from conveyor.errors import ConfigurationError
from tests.conformance import test_broker as broker_suite
from tests.conformance import test_executor as executor_suite
from tests.conftest import amqp_url, url_for
from tests.vhosts import delete_queues

OWNER = "quorum-test"

# The two suites, collected again in this module (so they use the fixtures below).
for _suite in (broker_suite, executor_suite):
    for _name, _value in vars(_suite).items():
        if _name.startswith("test_") and _name != "test_priority_first_then_fifo":
            globals()[_name] = _value
app = executor_suite.app  # the executor suite's app fixture (built on broker_url/backend_url below)


@pytest.fixture
def broker_kind() -> str:
    return "amqp"  # the suites' RabbitMQ branches apply


@pytest.fixture
def broker_url(tmp_path: Path, request: pytest.FixtureRequest) -> str:
    return url_for("amqp-quorum", tmp_path, request)


def env(queue: str = "default", body: bytes = b"x", **kw: object) -> Envelope:
    return Envelope(id=uuid.uuid4().hex, queue=queue, body=body, **kw)  # type: ignore[arg-type]


def test_priorities_are_ignored_on_quorum_queues_fifo_order_holds(broker: Broker) -> None:
    # Given messages of mixed priority on quorum queues (RabbitMQ 3.10: no priorities)
    broker.enqueue([env(priority=p, body=str(i).encode()) for i, p in enumerate([0, 5, 9, 5, 0, 9])])
    # When all are reserved
    got = broker.reserve(["default"], 10, owner=OWNER, lease=5)
    # Then they come in the order sent, their priority carried unchanged
    assert [d.body for d in got] == [b"0", b"1", b"2", b"3", b"4", b"5"]
    assert [d.priority for d in got] == [0, 5, 9, 5, 0, 9]


def test_every_queue_of_a_conveyor_queue_is_a_durable_quorum_queue(broker: AMQPBroker, amqp_vhost: str) -> None:
    assert broker.queue_type == "quorum"
    broker.enqueue([env()])
    names = queue_names(broker.prefix, "default")
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url(amqp_vhost)))
    try:
        ch = conn.channel()
        # A passive declare answers for a queue that exists; the type check is an active one:
        # declaring with x-queue-type quorum succeeds only on an equivalent (quorum) queue.
        for name in (names.ready, names.eta, names.dead, *names.levels, f"{broker.prefix}.registry"):
            ch.queue_declare(name, passive=True)
        ch.queue_declare(names.ready, durable=True, arguments={"x-queue-type": "quorum"})
        ch.queue_declare(names.eta, durable=True, arguments={"x-queue-type": "quorum"})
        with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="x-queue-type"):
            ch.queue_declare(names.dead, durable=True)  # as a classic queue: refused
    finally:
        conn.close()


def test_a_quorum_url_over_existing_classic_queues_names_the_queue_and_the_way_out(
    amqp_vhost: str, tmp_path: Path
) -> None:
    base = amqp_url(amqp_vhost)
    prefix = f"cvtest-{uuid.uuid4().hex[:12]}"
    results = backend_from_url(f"sqlite:///{tmp_path / 'results.db'}")
    classic = broker_from_url(f"{base}?prefix={prefix}", store=results)
    quorum = broker_from_url(f"{base}?prefix={prefix}&queue_type=quorum", store=results)
    try:
        # Given conveyor queue "default" declared as classic queues
        classic.enqueue([env()])
        # When a broker asking for quorum queues uses it
        with pytest.raises(ConfigurationError) as caught:
            quorum.enqueue([env()])
        # Then the error names the RabbitMQ queue, both types and what to do
        text = str(caught.value)
        assert f"'{prefix}.registry'" in text or f"'{prefix}.q.default" in text
        assert "classic queue" in text and "queue_type=classic" in text and "delete" in text
        # And the classic broker still works, its message intact
        assert len(classic.reserve(["default"], 5, owner=OWNER, lease=5)) == 1
    finally:
        classic.close()
        quorum.close()
        results.close()
        delete_queues(base, [prefix])


def test_an_unknown_queue_type_is_a_configuration_error(amqp_vhost: str, tmp_path: Path) -> None:
    results = backend_from_url(f"sqlite:///{tmp_path / 'results.db'}")
    try:
        with pytest.raises(ConfigurationError, match="queue_type='stream'"):
            broker_from_url(f"{amqp_url(amqp_vhost)}?queue_type=stream", store=results)
    finally:
        results.close()
