"""RabbitMQ quorum queues (``queue_type=quorum`` in the URL): the broker and executor conformance suites on them.

The conformance suites' tests are imported here and run with a quorum URL (``url_for("amqp-quorum")``:
the test's vhost and prefix plus ``queue_type=quorum``); ``broker_kind`` stays ``"amqp"`` so their
RabbitMQ branches apply. 3.10 quorum queues have no priorities: conveyor maps
the ten levels to three bands, a quorum queue each, so the suite's priority test (9s, 5s, 0s) holds,
and ``test_priorities_map_to_three_bands_fifo_within_a_band`` says what is lost: the order within a
band (docs/amqp.md, "Quorum queues"). The kill -9 worker tests are in tests/e2e/test_quorum_worker.py.
"""

from __future__ import annotations

import subprocess
import threading
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
        if _name.startswith("test_"):
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


def test_priorities_map_to_three_bands_fifo_within_a_band(broker: Broker) -> None:
    # Given messages of every priority on quorum queues (RabbitMQ 3.10: no priorities), in this order
    priorities = [0, 7, 3, 9, 4, 8, 6, 1, 5, 2]
    broker.enqueue([env(priority=p, body=str(p).encode()) for p in priorities])
    # When all are reserved
    got = broker.reserve(["default"], 10, owner=OWNER, lease=5)
    # Then band 7-9 comes first, then 4-6, then 0-3, each band in the order sent, priorities carried unchanged
    assert [d.priority for d in got] == [7, 9, 8, 4, 6, 5, 0, 3, 1, 2]
    assert [d.body for d in got] == [str(d.priority).encode() for d in got]


def test_every_queue_of_a_conveyor_queue_is_a_durable_quorum_queue(broker: AMQPBroker, amqp_vhost: str) -> None:
    assert broker.queue_type == "quorum"
    broker.enqueue([env()])
    names = queue_names(broker.prefix, "default", quorum=True)
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url(amqp_vhost)))
    try:
        ch = conn.channel()
        # A passive declare answers for a queue that exists; the type check is an active one:
        # declaring with x-queue-type quorum succeeds only on an equivalent (quorum) queue.
        assert names.bands == (f"{names.ready}.p7", f"{names.ready}.p4", names.ready)
        for name in (*names.bands, names.eta, names.dead, *names.levels, f"{broker.prefix}.registry"):
            ch.queue_declare(name, passive=True)
        for name in (*names.bands, names.eta):
            ch.queue_declare(name, durable=True, arguments={"x-queue-type": "quorum"})
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


def _ra_member(vhost: str, queue: str, action: str) -> None:
    """Stop or restart (``action``) the Raft member of quorum queue ``queue`` of ``vhost`` (this test's own)."""
    code = (
        f'{{ok, Q}} = rabbit_amqqueue:lookup(rabbit_misc:r(<<"{vhost}">>, queue, <<"{queue}">>)), '
        f"ra:{action}_server(quorum_queues, amqqueue:get_pid(Q))."
    )
    out = subprocess.run(["rabbitmqctl", "-q", "eval", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out


def test_a_first_enqueue_to_a_quorum_queue_whose_member_does_not_run_yet_waits_for_it_and_loses_nothing(
    broker_url: str, amqp_vhost: str, tmp_path: Path
) -> None:
    # Given a new conveyor queue whose ready queue exists but whose Raft member does not run yet: what a
    # producer meets when another process (a worker starting) is creating the queue at that moment, since
    # RabbitMQ answers its declare at once. The queue rejects a message then, and a transaction's
    # commit does not say so (RabbitMQ 3.10): the message was lost.
    store = backend_from_url(f"sqlite:///{tmp_path / 'results.db'}")
    creator, producer = (broker_from_url(broker_url, store=store) for _ in range(2))
    try:
        assert creator.reserve(["default"], 1, owner=OWNER, lease=5) == []  # declares the queues
        assert isinstance(creator, AMQPBroker)
        ready = queue_names(creator.prefix, "default", quorum=True).ready
        _ra_member(amqp_vhost, ready, "stop")
        back = threading.Timer(0.5, _ra_member, (amqp_vhost, ready, "restart"))
        back.start()
        # When a producer's first message to it is sent meanwhile
        [sent] = producer.enqueue([env()])
        back.join()
        # Then it is there once the member runs
        got: list[str] = []
        for _ in range(20):
            got += [d.id for d in creator.reserve(["default"], 1, owner=OWNER, lease=5, timeout=0.1)]
            if got:
                break
        assert got == [sent]
    finally:
        creator.close()
        producer.close()
        store.close()
