"""LeaseKeeper.fence: a finished delivery whose lease was lost (redelivered meanwhile) is named: its result is dropped.

On ``memory://`` (the broker contract is the same on every engine: ``extend`` answers the deliveries whose
lease is no longer held). The partition test (tests/e2e/test_partition.py) proves it across hosts.
"""

from __future__ import annotations

import time

from conveyor.brokers import Envelope
from conveyor.brokers.memory import MemoryBroker
from conveyor.states import State
from conveyor.worker.leases import LeaseKeeper
from conveyor.worker.settle import Pending

LEASE = 0.4


def _broker_with(ids: list[str]) -> MemoryBroker:
    broker = MemoryBroker("memory://")
    broker.enqueue([Envelope(i, "q", b"body") for i in ids])
    return broker


def test_a_delivery_extended_within_half_a_lease_is_held_for_sure_without_asking_the_broker() -> None:
    # Given a delivery reserved just now, whose message the broker then lost (purged behind the worker's back)
    broker = _broker_with(["a"])
    [delivery] = broker.reserve(["q"], 1, owner="w/1", lease=LEASE)
    keeper = LeaseKeeper(broker, LEASE)
    keeper.hold(delivery)
    broker.ack([delivery])
    # Then fence does not ask: less than lease / 2 passed, so the lease cannot have run out
    assert keeper.fence([delivery]) == set()


def test_a_delivery_redelivered_after_its_lease_ran_out_is_fenced() -> None:
    # Given a delivery held by a worker whose heartbeats stopped for longer than the lease
    broker = _broker_with(["a"])
    [first] = broker.reserve(["q"], 1, owner="w/1", lease=LEASE)
    keeper = LeaseKeeper(broker, LEASE)
    keeper.hold(first, since=time.monotonic())
    time.sleep(LEASE + 0.1)
    # and its message reserved again by another worker
    broker.recover()
    [again] = broker.reserve(["q"], 1, owner="w/2", lease=10)
    assert again.id == first.id
    # When it finishes and is fenced before its result is written
    lost = keeper.fence([first])
    # Then it is named, and its result and ack are dropped from what the pool settles
    assert lost == {first.id}
    pending = Pending(results=[(first.id, State.SUCCESS, b"x")], acks=[first])
    assert pending.drop_lost(lost) == [first]
    assert pending.results == [] and pending.acks == []


def test_a_delivery_in_doubt_but_still_held_is_kept_and_its_lease_extended() -> None:
    # Given a delivery whose lease was last extended more than lease / 2 ago, but which the broker still leases to it
    broker = _broker_with(["a"])
    [delivery] = broker.reserve(["q"], 1, owner="w/1", lease=LEASE)
    keeper = LeaseKeeper(broker, LEASE)
    keeper.hold(delivery, since=time.monotonic() - LEASE)
    time.sleep(LEASE * 0.6)
    # When it is fenced
    # Then it is kept, and its lease runs a whole lease from now: it survives past the old deadline
    assert keeper.fence([delivery]) == set()
    time.sleep(LEASE * 0.6)
    broker.recover()
    assert broker.extend([delivery], LEASE) == []
