"""Broker stalls at the broker API (issue 11): a long silence gives leases their term back, traffic does not.

A silence longer than STALL_GAP (nobody called reserve, recover or extend) looks, to the broker,
like a stall during which no worker could heartbeat; a lease that ran out meanwhile is not
recovered. A lease that runs out while the broker is being served is recovered as before. The
memory broker lives in its workers' process and cannot stall apart from them: it is not covered.
The worker-level scenario (a real SIGSTOP, a real held lock) is tests/e2e/test_broker_stalls.py.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from conveyor.brokers import Broker
from conveyor.brokers._stalls import STALL_GAP, STAMP_EVERY
from tests.conformance.test_broker import OWNER, env, stats_of


@pytest.fixture(params=["sqlite", "redis"])
def broker_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


def reserve_until_taken(broker: Broker, seconds: float, every: float = 0.2) -> tuple[float, list[str]]:
    """Reserve as worker-b every ``every`` seconds (traffic) until it gets a message; (seconds taken, ids)."""
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        got = broker.reserve(["default"], 1, owner="worker-b", lease=5)
        if got:
            return time.monotonic() - began, [d.id for d in got]
        time.sleep(every)
    return time.monotonic() - began, []


def test_a_silence_longer_than_the_stall_gap_recovers_no_lease(broker: Broker) -> None:
    # Given a message leased for 1 s
    broker.enqueue([env()])
    [held] = broker.reserve(["default"], 1, owner=OWNER, lease=1.0)
    # When nobody calls the broker for longer than STALL_GAP (the lease deadline passes meanwhile)
    time.sleep(STALL_GAP + 0.4)
    # Then a recovery and a reserve find nothing to redeliver, and the owner's late heartbeat holds
    assert broker.recover() == 0
    assert broker.reserve(["default"], 1, owner="worker-b", lease=5) == []
    assert stats_of(broker) == (0, 0, 1, 0)
    assert broker.extend([held], 5) == []
    broker.ack([held])


def test_after_a_silence_a_dead_owners_lease_expires_once_its_term_has_run(broker: Broker) -> None:
    # Given a message leased for 1 s whose owner dies, and a silence longer than STALL_GAP
    broker.enqueue([env()])
    [held] = broker.reserve(["default"], 1, owner=OWNER, lease=1.0)
    time.sleep(STALL_GAP + 0.4)
    # When traffic resumes (another worker reserving)
    took, ids = reserve_until_taken(broker, 4.0)
    # Then the lease expires after the term it had left when the silence began (about 1 s), not never
    assert ids == [held.id]
    assert 0.5 < took < 2.0


def test_a_lease_that_runs_out_under_traffic_is_still_redelivered(broker: Broker) -> None:
    # Given a message leased for 1 s whose owner dies, while another worker keeps reserving
    broker.enqueue([env()])
    [held] = broker.reserve(["default"], 1, owner=OWNER, lease=1.0)
    took, ids = reserve_until_taken(broker, 4.0)
    # Then it is redelivered once its lease has run out, as before
    assert ids == [held.id]
    assert 0.8 < took < 1.6


def test_one_idle_reserve_call_sees_a_dead_owners_lease_expire(broker: Broker) -> None:
    # Given a message leased for 2 s whose owner dies running it (its heartbeat had reported it running)
    broker.enqueue([env()])
    [held] = broker.reserve(["default"], 1, owner=OWNER, lease=2.0)
    assert broker.extend([held], 2.0, running=[held.id]) == []
    # When another worker waits in ONE reserve call longer than the lease (its idle looks are the
    # only traffic: they must not read as a stall, or the lease would be postponed forever)
    began = time.monotonic()
    [again] = broker.reserve(["default"], 1, owner="worker-b", lease=5, timeout=4.0)
    # Then it gets the message once the lease has run out
    assert (again.id, again.deliveries) == (held.id, 2)
    assert time.monotonic() - began < 3.0


def test_the_redis_scripts_use_the_same_stall_constants() -> None:
    source = (Path(__file__).parents[2] / "src/conveyor/brokers/redis/scripts/_common.lua").read_text()
    assert float(re.search(r"local STALL_GAP = ([\d.]+)", source)[1]) == STALL_GAP  # type: ignore[index]
    assert float(re.search(r"local STAMP_EVERY = ([\d.]+)", source)[1]) == STAMP_EVERY  # type: ignore[index]
