"""What only Redis Cluster asks of the Redis broker: queues on different nodes, and the registry's node
losing its data apart from the queues' nodes. Against real local 3-master clusters (tests/ha_servers.py)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.cluster

from conveyor.brokers import from_url
from conveyor.brokers.base import Envelope
from conveyor.brokers.redis import RedisBroker
from conveyor.brokers.redis.broker import CLUSTER_POLL
from conveyor.brokers.redis.keys import global_keys, queue_keys
from tests.ha_servers import LocalCluster, local_cluster


def node_port(url: str, key: str) -> int:
    """The port of the primary that serves ``key``'s slot."""
    hosts = url.removeprefix("redis+cluster://").partition("?")[0].split(",")
    host, _, port = hosts[0].partition(":")
    client = redis.cluster.RedisCluster(host=host, port=int(port))
    try:
        return int(client.get_node_from_key(key).port)  # type: ignore[no-untyped-call]
    finally:
        client.close()


def queues_on_other_nodes(url: str, prefix: str, count: int) -> list[str]:
    """``count`` queue names, each served by a different primary (none of them the registry's when count is 2)."""
    taken = {node_port(url, global_keys(prefix).queues)} if count < 3 else set()
    names: list[str] = []
    for i in range(200):
        name = f"q{i}"
        port = node_port(url, queue_keys(prefix, name).ready)
        if port not in taken:
            taken.add(port)
            names.append(name)
        if len(names) == count:
            return names
    raise AssertionError("no queue names spread over the nodes")


@pytest.fixture
def cluster_url(redis_cluster_session: str) -> str:
    return f"{redis_cluster_session}?prefix=cvtest-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def broker(cluster_url: str) -> Iterator[RedisBroker]:
    instance = from_url(cluster_url)
    assert isinstance(instance, RedisBroker)
    yield instance
    instance.close()


def test_one_batch_over_queues_on_three_nodes_is_stored_registered_and_served(
    broker: RedisBroker, cluster_url: str
) -> None:
    # Given three queues whose slots live on three different primaries
    names = queues_on_other_nodes(cluster_url, broker.prefix, 3)
    # When one enqueue call stores a message in each (no MULTI can span them)
    broker.enqueue([Envelope(f"id-{q}", q, q.encode()) for q in names])
    # Then every queue is registered, each holds its message, and reserve and cancel reach them all
    assert sorted((s.queue, s.ready) for s in broker.stats()) == sorted((q, 1) for q in names)
    got = broker.reserve(names[:2], 5, owner="w", lease=30)
    assert sorted(d.id for d in got) == sorted(f"id-{q}" for q in names[:2])
    assert broker.cancel([f"id-{names[2]}"]) == [f"id-{names[2]}"]
    broker.ack(got)
    assert [(s.ready, s.in_flight) for s in broker.stats()] == [(0, 0)] * 3


def test_a_reserve_blocked_on_two_queues_wakes_for_the_second_within_the_cluster_poll(
    broker: RedisBroker, cluster_url: str
) -> None:
    # Given a reserve waiting on two queues of different nodes (one BLPOP cannot span their slots)
    first, second = queues_on_other_nodes(cluster_url, broker.prefix, 2)
    broker.enqueue([Envelope("warm", first, b"x")])  # registers the queue
    broker.ack(broker.reserve([first], 1, owner="w", lease=30))
    got: list[float] = []

    def wait() -> None:
        deliveries = broker.reserve([first, second], 1, owner="w", lease=30, timeout=5)
        got.append(time.monotonic())
        assert [d.id for d in deliveries] == ["late"]

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(0.3)
    # When a message lands in the second queue
    sent = time.monotonic()
    broker.enqueue([Envelope("late", second, b"y")])
    thread.join(timeout=10)
    # Then the waiter has it within the cluster poll (plus scheduling slack), not after its timeout
    assert got and got[0] - sent < CLUSTER_POLL + 0.4


@pytest.mark.slow
def test_the_registry_rebuilt_after_its_node_alone_lost_its_data(tmp_path: Path) -> None:
    with local_cluster(tmp_path) as cluster:
        _registry_node_loses_its_data(cluster)


def _registry_node_loses_its_data(cluster: LocalCluster) -> None:
    url = f"{cluster.url}?prefix=reg"
    broker = from_url(url)
    assert isinstance(broker, RedisBroker)
    try:
        # Given two queues on other nodes than the registry's, each holding a message
        names = queues_on_other_nodes(url, "reg", 2)
        broker.enqueue([Envelope(f"id-{q}", q, b"x") for q in names])
        assert [s.queue for s in broker.stats()] == sorted(names)
        # When the registry's node restarts empty (kill -9, no persistence): the queues' markers survive
        cluster.restart_node_empty(node_port(url, global_keys("reg").queues))
        # Then the next reader of the registry finds every queue again (rebuilt from the markers),
        # so stats and revoke reach the messages, and a producer's next enqueue still works
        assert sorted((s.queue, s.ready) for s in broker.stats()) == sorted((q, 1) for q in names)
        assert broker.cancel([f"id-{names[0]}"]) == [f"id-{names[0]}"]
        broker.enqueue([Envelope("after", names[1], b"y")])
        assert sorted(d.id for d in broker.reserve([names[1]], 5, owner="w", lease=30)) == ["after", f"id-{names[1]}"]
    finally:
        broker.close()


def test_an_unreachable_cluster_is_broker_unavailable_after_retry_for() -> None:
    from conveyor.brokers.redis import RedisBroker
    from conveyor.errors import BrokerUnavailable
    from tests.servers import free_port

    with pytest.raises(BrokerUnavailable, match=r"did not answer within 0\.2 s"):
        RedisBroker(f"redis+cluster://127.0.0.1:{free_port()}", retry_for=0.2)
