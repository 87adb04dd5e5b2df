"""When the Redis result backend fences a worker's result write by its lease, and when it cannot.

The broker tells its store it sees the leases (``Store.beside_leases``) only when the store is Redis
on the same server, database and key prefix, and not a Cluster (a result and its message live in
different slots there). The fenced write itself is a conformance test: tests/conformance/test_result_fencing.py.
"""

from __future__ import annotations

import time
import uuid

from conveyor.backends.redis import RedisResultBackend
from conveyor.brokers import Envelope
from conveyor.brokers.redis import RedisBroker
from conveyor.states import State
from tests.conftest import REDIS_URL


def test_only_a_backend_beside_the_broker_fences(redis_prefix: str) -> None:
    # Given result backends on the broker's prefix, on another prefix, and on another database
    url = f"{REDIS_URL}?prefix={redis_prefix}"
    beside, apart = RedisResultBackend(url), RedisResultBackend(f"{url}-results")
    other_db = RedisResultBackend(f"{REDIS_URL.rsplit('/', 1)[0]}/15?prefix={redis_prefix}")
    # When a broker is built with each as its store
    brokers = [RedisBroker(url, store=store) for store in (beside, apart, other_db)]
    try:
        # Then only the one beside it fences
        assert [beside.fenced, apart.fenced, other_db.fenced] == [True, False, False]
        # and a late result through the other lands: only the worker's own check fences it
        broker = brokers[1]
        broker.enqueue([Envelope(id=uuid.uuid4().hex, queue="default", body=b"x")])
        [stale] = broker.reserve(["default"], 1, owner="worker-a", lease=0.2)
        time.sleep(0.4)
        broker.recover()
        assert broker.reserve(["default"], 1, owner="worker-b", lease=30) != []
        refused = apart.set_held([(stale.id, State.SUCCESS, b"late")], 60, [(stale.queue, stale.token)])
        assert refused == [] and apart.get(stale.id) == b"late"
    finally:
        for broker in brokers:
            broker.close()
        for store in (beside, apart, other_db):
            store.close()
