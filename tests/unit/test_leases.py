"""LeaseKeeper: which leases a worker child's heartbeat extends (on ``memory://``)."""

from __future__ import annotations

import pytest

from conveyor.brokers import Envelope
from conveyor.brokers.memory import MemoryBroker
from conveyor.worker.leases import LeaseKeeper


def test_releasing_a_given_back_lease_keeps_the_newer_lease_of_the_same_message() -> None:
    broker = MemoryBroker("memory://")
    broker.enqueue([Envelope("m1", "default", b"body")])
    keeper = LeaseKeeper(broker, lease=30.0)  # not started: beat() is called by hand
    # Given a message the child reserved, gave back, and reserved again before the give-back ended
    [old] = broker.reserve(["default"], 1, owner="child", lease=30.0)
    keeper.hold_all([old])
    broker.nack(old)
    [new] = broker.reserve(["default"], 1, owner="child", lease=30.0)
    keeper.hold_all([new])
    assert new.id == old.id and new.token != old.token
    # When the give-back releases the lease it gave back
    keeper.release_all([old])
    keeper.release(old)
    # Then the new lease is still held and extended by the heartbeat
    assert keeper.held() == [new]
    assert broker.extend(keeper.held(), 30.0) == []
    # And releasing the new lease lets it go
    keeper.release(new)
    assert keeper.held() == []


def test_leases_given_back_one_by_one_are_not_reported_lost_but_a_new_lease_of_them_is(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = MemoryBroker("memory://")
    broker.enqueue([Envelope(f"m{i}", "default", b"body") for i in range(3)])
    keeper = LeaseKeeper(broker, lease=30.0)
    batch = broker.reserve(["default"], 3, owner="child", lease=30.0)
    keeper.hold_all(batch)
    # Given batch-mates being given back one nack at a time (Child.return_unstarted), two beats meanwhile
    keeper.acking(batch)
    broker.nack(batch[0])
    keeper.beat()
    broker.nack(batch[1])
    keeper.beat()
    # Then no lease is reported lost: they were given back, not taken
    assert "was lost" not in caplog.text
    # When one of them is reserved again by the same child and that new lease is then lost
    [again] = broker.reserve(["default"], 1, owner="child", lease=30.0)
    keeper.hold(again)
    broker.nack(again)  # stands for a lease taken away (another worker recovered it)
    keeper.beat()
    keeper.beat()
    # Then that one is reported (it may run twice)
    assert f"lease of message {again.id} was lost" in caplog.text
