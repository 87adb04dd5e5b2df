"""LeaseKeeper: which leases a worker child's heartbeat extends (on ``memory://``)."""

from __future__ import annotations

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
