"""A worker's result write fenced by its lease on the server (``ResultBackend.set_held``, issue 19).

Where the result backend sees the broker's leases (Redis on the same server, database and prefix;
PostgreSQL in the same schema: the broker tells it, ``Store.beside_leases``), a record lands only while
its message is still leased under the writer's token, checked in the write's own atomic step. Elsewhere
``set_held`` is ``set_many``: only the worker's own check before the write fences
(``LeaseKeeper.fence``, ``tests/unit/test_lease_fence.py``). The cut itself: ``tests/e2e/test_partition.py``.

Each test reads Given / When / Then; every wait is bounded.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.backends import from_url as backend_from_url
from conveyor.backends.base import ResultBackend
from conveyor.brokers import Broker, Delivery, Envelope
from conveyor.brokers import from_url as broker_from_url
from conveyor.states import State
from conveyor.worker.settle import Pending
from tests.conftest import backend_url_for, url_for

#: Engines whose result backend, paired with their broker as an app pairs them, checks leases in the write.
FENCED = {"redis", "postgres"}
TTL = 60.0


@pytest.fixture
def pair(broker_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Broker, ResultBackend]]:
    """A broker and the result backend it was built with, as ``App`` builds them (one URL for both; SQLite
    results beside RabbitMQ)."""
    url = url_for(broker_kind, tmp_path, request)  # PostgreSQL: a fresh schema per call, so called once
    backend = backend_from_url(backend_url_for(broker_kind, tmp_path, request) if broker_kind == "amqp" else url)
    broker = broker_from_url(url, max_deliveries=5, store=backend)
    yield broker, backend
    broker.close()
    backend.close()


def _redelivered(broker: Broker) -> tuple[Delivery, Delivery]:
    """One message leased to worker a, its lease lost, then leased to worker b: (a's delivery, b's)."""
    broker.enqueue([Envelope(id=uuid.uuid4().hex, queue="default", body=b"x")])
    [stale] = broker.reserve(["default"], 1, owner="worker-a", lease=0.2)
    time.sleep(0.4)
    broker.recover()
    [holder] = broker.reserve(["default"], 1, owner="worker-b", lease=30)
    assert holder.id == stale.id and holder.token != stale.token
    return stale, holder


def _lease(delivery: Delivery) -> list[tuple[str, str]]:
    return [(delivery.queue, delivery.token)]


def test_a_result_from_a_run_whose_lease_was_lost_is_refused_where_the_backend_sees_the_leases(
    pair: tuple[Broker, ResultBackend], broker_kind: str
) -> None:
    broker, backend = pair
    # Given a message redelivered to worker b after worker a lost its lease
    stale, holder = _redelivered(broker)
    # When worker a's late result arrives
    refused = backend.set_held([(stale.id, State.SUCCESS, b"from a")], TTL, _lease(stale))
    # Then it is refused where the backend sees the leases (it lands elsewhere: set_many)
    if broker_kind in FENCED:
        assert refused == [stale.id]
        assert backend.get(stale.id) is None
    else:
        assert refused == []
        assert backend.get(stale.id) == b"from a"
    # When the holder writes its own result
    assert backend.set_held([(holder.id, State.SUCCESS, b"from b")], TTL, _lease(holder)) == []
    # Then it lands, and once its message is acked no late write replaces it
    assert backend.get(holder.id) == b"from b"
    broker.ack([holder])
    late = backend.set_held([(stale.id, State.FAILURE, b"late")], TTL, _lease(stale))
    assert backend.get(holder.id) == (b"from b" if broker_kind in FENCED else b"late")
    assert late == ([stale.id] if broker_kind in FENCED else [])


def test_a_batch_writes_the_held_leases_and_refuses_the_lost_one(
    pair: tuple[Broker, ResultBackend], broker_kind: str
) -> None:
    broker, backend = pair
    # Given a held delivery, a lost one, and a record with no lease to check (an empty token)
    stale, _ = _redelivered(broker)
    broker.enqueue([Envelope(id=uuid.uuid4().hex, queue="other", body=b"y")])
    [held] = broker.reserve(["other"], 1, owner="worker-a", lease=30)
    loose = uuid.uuid4().hex
    items = [(held.id, State.SUCCESS, b"held"), (stale.id, State.SUCCESS, b"stale"), (loose, State.SUCCESS, b"loose")]
    # When they are written in one batch
    refused = backend.set_held(items, TTL, [(held.queue, held.token), (stale.queue, stale.token), ("", "")])
    # Then only the lost lease's record is refused (where the backend sees the leases)
    fenced = broker_kind in FENCED
    assert refused == ([stale.id] if fenced else [])
    assert backend.get_many([held.id, stale.id, loose]) == [b"held", None if fenced else b"stale", b"loose"]


def test_the_worker_drops_the_ack_of_a_refused_write(pair: tuple[Broker, ResultBackend], broker_kind: str) -> None:
    broker, backend = pair
    # Given a worker's pending batch: a task whose lease it still holds, and one whose lease was lost
    stale, holder = _redelivered(broker)
    broker.enqueue([Envelope(id=uuid.uuid4().hex, queue="default", body=b"y")])
    [mine] = broker.reserve(["default"], 1, owner="worker-a", lease=30)
    pending = Pending(
        results=[(mine.id, State.SUCCESS, b"mine"), (stale.id, State.SUCCESS, b"stale")], acks=[mine, stale]
    )
    # When it writes the results
    dropped = pending.write_results(backend, TTL)
    # Then the refused one's result and ack are dropped (its ack would be refused too), the other stays
    if broker_kind in FENCED:
        assert dropped == [stale]
        assert pending.acks == [mine] and [r[0] for r in pending.results] == [mine.id]
        assert backend.get(stale.id) is None
    else:
        assert dropped == [] and pending.acks == [mine, stale]
    assert backend.get(mine.id) == b"mine"
    broker.ack(pending.acks)
    assert broker.extend([holder], 30) == []  # the holder's lease is untouched


def test_a_started_record_is_fenced_and_still_yields_to_a_revocation(
    pair: tuple[Broker, ResultBackend], broker_kind: str
) -> None:
    broker, backend = pair
    # Given a message redelivered to worker b after worker a lost its lease
    stale, holder = _redelivered(broker)
    # When worker a's STARTED write arrives late
    landed = backend.try_set_held(stale.id, State.STARTED, b"a started", TTL, (stale.queue, stale.token))
    # Then it is refused for its lease where the backend sees the leases (the worker then skips the task)
    assert landed is (None if broker_kind in FENCED else True)
    # and the holder's lands, unless the task was revoked
    assert backend.try_set_held(holder.id, State.STARTED, b"b started", TTL, (holder.queue, holder.token)) is True
    assert backend.get(holder.id) == b"b started"
    backend.set(holder.id, State.REVOKED, b"revoked", TTL)
    assert backend.try_set_held(holder.id, State.STARTED, b"again", TTL, (holder.queue, holder.token)) is False
    assert backend.get(holder.id) == b"revoked"
