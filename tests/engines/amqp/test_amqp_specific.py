"""What only the RabbitMQ broker promises, beyond the conformance suite.

Dropped connections (closed by the server with ``rabbitmqctl close_all_connections`` on this test's
vhost only), bounded failure on a dead server, delays that never run early, the missing result
backend at start-up, and a broker shared across ``fork()``.
"""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
import uuid
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from conveyor import App
from conveyor.backends import from_url as backend_from_url
from conveyor.backends.memory import MemoryResultBackend
from conveyor.brokers import Broker, Delivery, Envelope, WorkerInfo
from conveyor.brokers import from_url as broker_from_url
from conveyor.brokers.amqp import AMQPBroker
from conveyor.brokers.amqp import admin as admin_module
from conveyor.brokers.amqp.names import queue_names
from conveyor.brokers.amqp.scan import Decide, scan
from conveyor.errors import BrokerUnavailable, ConfigurationError
from conveyor.states import ResultRecord, State, encode_record
from tests.conftest import amqp_url, load_factor, wait_until
from tests.servers import free_port
from tests.vhosts import rabbitmqctl


def env(queue: str = "default", body: bytes = b"x", **kw: object) -> Envelope:
    return Envelope(id=uuid.uuid4().hex, queue=queue, body=body, explicit_id=False, **kw)  # type: ignore[arg-type]


@pytest.fixture
def broker(amqp_test_url: str, tmp_path: Path) -> Iterator[AMQPBroker]:
    results = backend_from_url(f"sqlite:///{tmp_path / 'results.db'}")
    instance = AMQPBroker.from_url(amqp_test_url, max_deliveries=3, store=results)
    yield instance
    instance.close()
    results.close()


def mark_started(broker: AMQPBroker, task_id: str) -> None:
    """Write the STARTED record a worker writes before it runs a task (what a redelivery is counted by)."""
    record = ResultRecord(state=State.STARTED, task="t", started=time.time())
    broker._store.set(task_id, State.STARTED, encode_record(record), 60)


def drop_connections(vhost: str) -> None:
    """The server closes every client connection of ``vhost`` (other helpers' vhosts are left alone)."""
    rabbitmqctl("close_all_connections", "-p", vhost, "conveyor test: connection drop")


def reserve_until(broker: Broker, timeout: float, n: int = 1, queues: tuple[str, ...] = ("default",)) -> list[Delivery]:
    """Reserve until something comes, for up to ``timeout`` seconds (a redelivery takes one extra look)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = broker.reserve(list(queues), n, owner="w", lease=30, timeout=0.2)
        if got:
            return got
    return []


def test_a_dropped_connection_requeues_the_running_message_and_the_broker_reconnects(
    broker: AMQPBroker, amqp_vhost: str
) -> None:
    # Given a message reserved (unacknowledged on this process's connection) and started
    broker.enqueue([env(body=b"work")])
    [held] = broker.reserve(["default"], 1, owner="w", lease=30)
    mark_started(broker, held.id)
    # When the server drops the connection
    drop_connections(amqp_vhost)
    # Then the heartbeat learns the lease is lost, and a stale ack is ignored
    assert broker.extend([held], 30) == [held.id]
    broker.ack([held])
    # And the message is back, counted as its second delivery, through a new connection
    [again] = reserve_until(broker, 10)
    assert (again.id, again.body, again.deliveries) == (held.id, b"work", 2)
    broker.ack([again])
    assert broker.stats()[0].ready == 0


def test_a_message_whose_worker_keeps_dying_is_dead_lettered(broker: AMQPBroker, amqp_vhost: str) -> None:
    # Given max_deliveries=3 and a message whose worker connection dies every time it holds it
    broker.enqueue([env(body=b"poison")])
    for attempt in (1, 2, 3):
        [d] = reserve_until(broker, 10)
        assert d.deliveries == attempt
        mark_started(broker, d.id)
        drop_connections(amqp_vhost)
    # When it would be delivered a fourth time
    assert reserve_until(broker, 1.5) == []
    # Then it is dead, with the reason
    [dead] = broker.dead_letters()
    assert (dead.body, dead.deliveries) == (b"poison", 3)
    assert "3 times" in dead.reason and "connection" in dead.reason


def test_a_producer_gets_broker_unavailable_after_a_bounded_retry() -> None:
    # Given a broker URL where nothing listens
    port = free_port()
    broker = AMQPBroker(f"amqp://guest:guest@127.0.0.1:{port}/%2F", store=MemoryResultBackend(), retry_for=0.5)
    # When a producer enqueues, it fails clearly within the bounded retry
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match=f"127.0.0.1:{port}.* did not answer within 0.5 s"):
        broker.enqueue([env()])
    assert time.monotonic() - started < 5


def test_countdowns_never_run_early_and_run_once(broker: AMQPBroker) -> None:
    # Given messages due in 0.2 to 1.5 s, and one due in an hour enqueued first (no head-of-line wait)
    now = time.time()
    later = env(body=b"hour", eta=now + 3600)
    soon = [env(body=f"{delay}".encode(), eta=now + delay) for delay in (1.5, 0.2, 0.9, 0.45)]
    broker.enqueue([later, *soon])
    # When a worker reserves until it has them all (up to 10 s)
    seen: dict[bytes, float] = {}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(seen) < len(soon):
        for d in broker.reserve(["default"], 10, owner="w", lease=30, timeout=0.3):
            assert d.body not in seen, "delivered twice"
            seen[d.body] = time.time()
            broker.ack([d])
    # Then each ran once, never before its eta, and not much after it: 0.6 s on an idle machine, more
    # on a loaded one, where the promoting thread and this one wait for a CPU (the lateness is no promise)
    assert sorted(seen) == sorted(e.body for e in soon)
    late = 0.6 * load_factor()
    for e in soon:
        assert e.eta is not None
        assert e.eta <= seen[e.body] < e.eta + late, f"{e.body!r} {seen[e.body] - e.eta:.2f}s after its eta"
    assert broker.stats()[0].scheduled == 1  # the hour-long one still waits


def test_a_retry_delay_never_runs_early(broker: AMQPBroker) -> None:
    # Given a reserved message given back with a 0.6 s delay and a new body (attempt 1)
    broker.enqueue([env(body=b"attempt-0")])
    [d] = broker.reserve(["default"], 1, owner="w", lease=30)
    returned = time.time()
    broker.nack(d, delay=0.6, body=b"attempt-1")
    # Then it is not handed out before the delay, then once, with the new body and its delivery uncounted
    [again] = reserve_until(broker, 5)
    assert time.time() >= returned + 0.6
    assert (again.id, again.body, again.deliveries) == (d.id, b"attempt-1", 1)


def test_a_broker_built_without_a_store_fails_at_construction_naming_the_fix() -> None:
    # Given no server at all: the check comes before any connection
    url = f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F"
    # Then building the broker without a store fails at once, directly or through the registry
    with pytest.raises(ConfigurationError, match=r"store=.*App\(broker='amqp://"):
        AMQPBroker(url)
    with pytest.raises(ConfigurationError, match="keeps messages only"):
        broker_from_url(url)
    # While a store is enough to build it (it connects on first use)
    assert isinstance(broker_from_url(url, store=MemoryResultBackend()), AMQPBroker)


def test_worker_heartbeats_are_values_in_the_store_not_result_records(broker: AMQPBroker) -> None:
    # Given a registered worker
    now = time.time()
    broker.register_worker(WorkerInfo("host.1", "host", 1, ("default",), 2, "process", now, now), ttl=30)
    key = f"{broker.prefix}:worker:host.1"
    # Then its heartbeat is a value with a time to live, and no task record (no fake STARTED state) exists
    raw = broker._store.get_value(key)
    assert raw is not None and json.loads(raw)["id"] == "host.1"
    assert broker._store.get(key) is None
    assert [w.id for w in broker.workers()] == ["host.1"]
    # And unregistering deletes the value
    broker.unregister_worker("host.1")
    assert broker._store.get_value(key) is None and broker.workers() == []


def test_an_app_on_rabbitmq_without_a_result_backend_fails_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given no CONVEYOR_BACKEND_URL in the environment
    monkeypatch.delenv("CONVEYOR_BACKEND_URL", raising=False)
    # Then building the app names the fix
    with pytest.raises(ConfigurationError, match=r"backend='redis://.*sqlite:///"):
        App("shop", broker="amqp://guest:guest@127.0.0.1:5672/%2F")
    # And the same holds when the broker comes from the environment
    monkeypatch.setenv("CONVEYOR_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
    with pytest.raises(ConfigurationError, match="no result store"):
        App("shop")
    # While naming a backend is enough
    assert App("shop", backend="memory://").settings.backend_url == "memory://"


def _drain(broker: AMQPBroker, out: Connection) -> None:
    """Child process: reserve and ack through the inherited broker until the queue stays empty."""
    seen: list[str] = []
    while got := broker.reserve(["default"], 5, owner="child", lease=30, timeout=0.3):
        seen += [d.id for d in got]
        broker.ack(got)
    out.send(seen)
    out.close()


def test_a_forked_process_opens_its_own_connection(broker: AMQPBroker) -> None:
    # Given 300 messages enqueued through a broker whose connection is open
    ids = broker.enqueue([env(body=str(i).encode()) for i in range(300)])
    # When a forked child and the parent drain the queue through that same broker object
    ctx = multiprocessing.get_context("fork")
    receiver, sender = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_drain, args=(broker, sender))
    child.start()
    sender.close()
    mine: list[str] = []
    while got := broker.reserve(["default"], 5, owner="parent", lease=30, timeout=0.3):
        mine += [d.id for d in got]
        broker.ack(got)
    theirs: list[str] = receiver.recv() if receiver.poll(20) else []
    child.join(timeout=10)
    # Then every message was taken exactly once, and the parent's connection still works
    assert child.exitcode == 0
    assert sorted(mine + theirs) == sorted(ids)
    assert broker.enqueue([env()]) and broker.stats()[0].ready == 1


def test_concurrent_producers_with_one_key_store_one_message(amqp_test_url: str, tmp_path: Path) -> None:
    # Given four producers, each with its own connection, sharing one result backend file
    results = backend_from_url(f"sqlite:///{tmp_path / 'keys.db'}")
    producers = [AMQPBroker.from_url(amqp_test_url, store=results) for _ in range(4)]
    answers: list[str] = []
    # When they enqueue the same key at the same moment
    barrier = threading.Barrier(len(producers))

    def send(producer: AMQPBroker) -> None:
        barrier.wait(timeout=10)
        answers.extend(producer.enqueue([env(key="receipt-42")]))

    threads = [threading.Thread(target=send, args=(p,)) for p in producers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    # Then all four got the one id that was stored, and one message waits
    assert len(answers) == 4 and len(set(answers)) == 1
    assert producers[0].stats()[0].ready == 1
    for producer in producers:
        producer.close()
    results.close()


def test_a_message_released_for_a_dead_owner_is_given_back_once_not_again_at_its_lease_end(broker: AMQPBroker) -> None:
    # Given a message leased for 0.3 s to an owner in this process, released because that owner died
    [sent] = broker.enqueue([env()])
    broker.reserve(["default"], 1, owner="dead-child", lease=0.3, timeout=0.0)
    assert broker.release_owner("dead-child") == 1
    # When another owner takes it, and the first lease's end passes
    [again] = reserve_until(broker, 5)
    time.sleep(0.5)
    broker.recover()
    # Then it was given back once: no second copy, and only the new holder counts it in flight
    assert again.id == sent
    assert reserve_until(broker, 1) == []
    [stats] = broker.stats()
    assert (stats.ready, stats.in_flight) == (0, 1)
    broker.ack([again])
    assert broker.stats()[0].in_flight == 0


def test_a_waiting_reserve_is_pushed_no_more_than_its_free_slots(amqp_test_url: str) -> None:
    # Given ten waiting messages, and a worker that takes two with a waiting (pushed) reserve
    producer = AMQPBroker.from_url(amqp_test_url, store=MemoryResultBackend())
    worker = AMQPBroker.from_url(amqp_test_url, store=MemoryResultBackend())
    other = AMQPBroker.from_url(amqp_test_url, store=MemoryResultBackend())
    try:
        producer.enqueue([env(body=str(i).encode()) for i in range(10)])
        taken: list[Delivery] = []
        deadline = time.monotonic() + 10
        while len(taken) < 2 and time.monotonic() < deadline:
            taken += worker.reserve(["default"], 2 - len(taken), owner="w", lease=30, timeout=1)
        assert [d.body for d in taken] == [b"0", b"1"]
        # Then RabbitMQ pushed it nothing more while it holds them: the other eight are free for anyone
        time.sleep(0.3)
        rest = other.reserve(["default"], 10, owner="o", lease=30)
        assert [d.body for d in rest] == [str(i).encode() for i in range(2, 10)]
        other.ack(rest)
        # And after a partial batch (one message for four free slots), later messages are not pushed to it
        producer.enqueue([env(body=b"lone")])
        [lone] = worker.reserve(["default"], 4, owner="w", lease=30, timeout=5)
        producer.enqueue([env(body=b"later")])
        time.sleep(0.3)
        assert [d.body for d in other.reserve(["default"], 4, owner="o", lease=30)] == [b"later"]
        worker.ack([*taken, lone])
    finally:
        for broker in (producer, worker, other):
            broker.close()


def test_cancel_finds_a_scheduled_message_that_moves_to_ready_while_it_scans(
    broker: AMQPBroker, amqp_vhost: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a message due in 1 s, sitting in a delay level, and this process' promoter serving its queue
    # (what a worker's pushed reserve starts; started alone here, so no consumer takes the promoted message)
    broker._promoter.serve(["default"])
    scheduled = env(body=b"later", eta=time.time() + 1.0)
    broker.enqueue([scheduled])
    # And RabbitMQ and the promoter moving it to the ready queue while cancel scans: made certain here by
    # holding the scan, once it has looked at a ready queue and taken nothing yet, until the message is ready
    ready = queue_names(broker.prefix, "default").ready
    real_scan = scan
    taken = 0

    def scan_then_let_it_move(ch: BlockingChannel, queue: str, decide: Decide) -> int:
        nonlocal taken
        took = real_scan(ch, queue, decide)
        taken += took
        if queue == ready and not taken:
            wait_until(lambda: ready_count(amqp_vhost, ready) == 1, 10, "the message to be promoted to ready")
        return took

    monkeypatch.setattr(admin_module, "scan", scan_then_let_it_move)
    # When it is cancelled
    found = broker.cancel([scheduled.id])
    monkeypatch.undo()
    # Then cancel found and deleted it: it was waiting all along
    assert found == [scheduled.id]
    [stats] = broker.stats()
    assert (stats.ready, stats.scheduled) == (0, 0)
    assert reserve_until(broker, 1) == []


def ready_count(vhost: str, name: str) -> int:
    """Messages ready in RabbitMQ queue ``name`` (not counting unacknowledged ones), over a connection of its own."""
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url(vhost)))
    try:
        return int(conn.channel().queue_declare(name, passive=True).method.message_count)
    finally:
        conn.close()
