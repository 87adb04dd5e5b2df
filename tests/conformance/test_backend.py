"""The result backend contract (backends/base.py), run unchanged over every backend kind."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from conveyor.backends import ResultBackend
from conveyor.states import State


def test_set_then_get(backend: ResultBackend) -> None:
    assert backend.get("t1") is None
    backend.set("t1", State.STARTED, b'{"state":"STARTED"}', ttl=60)
    assert backend.get("t1") == b'{"state":"STARTED"}'
    backend.set("t1", State.SUCCESS, b'{"state":"SUCCESS"}', ttl=60)
    assert backend.get("t1") == b'{"state":"SUCCESS"}'


def test_wait_returns_at_once_for_a_final_record(backend: ResultBackend) -> None:
    backend.set("t2", State.SUCCESS, b"done", ttl=60)
    started = time.monotonic()
    assert backend.wait("t2", timeout=5) == b"done"
    assert time.monotonic() - started < 0.5


def test_wait_wakes_when_the_result_lands(backend: ResultBackend) -> None:
    # Given a waiter, and a result that lands 0.3 s later from another thread
    timer = threading.Timer(0.3, lambda: backend.set("t3", State.FAILURE, b"boom", ttl=60))
    timer.start()
    started = time.monotonic()
    # Then the waiter wakes with it promptly
    assert backend.wait("t3", timeout=5) == b"boom"
    elapsed = time.monotonic() - started
    timer.join()
    assert 0.25 <= elapsed < 1.0


def test_wait_times_out_with_the_latest_record(backend: ResultBackend) -> None:
    backend.set("t4", State.STARTED, b"running", ttl=60)
    started = time.monotonic()
    assert backend.wait("t4", timeout=0.3) == b"running"
    assert 0.25 <= time.monotonic() - started < 2.0
    assert backend.wait("nothing", timeout=0.1) is None


def test_records_expire_after_their_ttl(backend: ResultBackend) -> None:
    backend.set("t5", State.SUCCESS, b"short", ttl=0.3)
    assert backend.get("t5") == b"short"
    time.sleep(0.5)
    assert backend.get("t5") is None


def test_forget_and_set_many(backend: ResultBackend) -> None:
    backend.set_many([("a", State.SUCCESS, b"1"), ("b", State.FAILURE, b"2")], ttl=60)
    assert (backend.get("a"), backend.get("b")) == (b"1", b"2")
    backend.forget("a")
    assert backend.get("a") is None


# -- coordination primitives: leases, claims, values ---------------------------------------------


def test_two_owners_compete_for_a_lease(backend: ResultBackend) -> None:
    # Given owner a holding the lease
    assert backend.acquire_lease("leader", "a", ttl=30)
    # Then b cannot take it, and a renewing it keeps it
    assert not backend.acquire_lease("leader", "b", ttl=30)
    assert backend.acquire_lease("leader", "a", ttl=30)
    assert not backend.acquire_lease("leader", "b", ttl=30)
    # And leases of other names are independent
    assert backend.acquire_lease("other", "b", ttl=30)


def test_a_lapsed_lease_is_taken_over(backend: ResultBackend) -> None:
    # Given a's lease that a stops renewing
    assert backend.acquire_lease("leader", "a", ttl=0.3)
    assert not backend.acquire_lease("leader", "b", ttl=0.3)
    # When its ttl passes, b takes it over, and a has lost it
    _eventually(lambda: backend.acquire_lease("leader", "b", ttl=30), timeout=3)
    assert not backend.acquire_lease("leader", "a", ttl=30)


def test_renewal_extends_a_lease(backend: ResultBackend) -> None:
    # Given a lease of 0.6 s that its owner renews every 0.2 s for 1.2 s
    assert backend.acquire_lease("leader", "a", ttl=0.6)
    deadline = time.monotonic() + 1.2
    while time.monotonic() < deadline:
        time.sleep(0.2)
        assert backend.acquire_lease("leader", "a", ttl=0.6)
        # Then nobody else could take it meanwhile
        assert not backend.acquire_lease("leader", "b", ttl=0.6)


def test_release_only_by_the_holder(backend: ResultBackend) -> None:
    assert backend.acquire_lease("leader", "a", ttl=30)
    # When b releases a lease it does not hold, nothing happens
    backend.release_lease("leader", "b")
    assert not backend.acquire_lease("leader", "b", ttl=30)
    # When a releases it, b can take it at once
    backend.release_lease("leader", "a")
    assert backend.acquire_lease("leader", "b", ttl=30)


def test_concurrent_lease_acquisition_has_one_winner(backend: ResultBackend) -> None:
    winners = _race(lambda i: backend.acquire_lease("leader", f"owner-{i}", ttl=30), 8)
    assert sum(winners) == 1


def test_claim_is_true_once_then_expires_or_is_unclaimed(backend: ResultBackend) -> None:
    # Given a claimed key
    assert backend.claim("slot:1", ttl=0.3)
    assert not backend.claim("slot:1", ttl=0.3)
    assert backend.claim("slot:2", ttl=30)
    # When its ttl passes, it can be claimed again
    _eventually(lambda: backend.claim("slot:1", ttl=30), timeout=3)
    # When it is unclaimed, too
    backend.unclaim("slot:2")
    assert backend.claim("slot:2", ttl=30)
    backend.unclaim("never-claimed")


def test_concurrent_claims_have_exactly_one_winner(backend: ResultBackend) -> None:
    for key in ("slot:a", "slot:b", "slot:c", "slot:d", "slot:e"):
        winners = _race(lambda _, key=key: backend.claim(key, ttl=30), 8)  # type: ignore[misc]
        assert sum(winners) == 1, f"{key}: {sum(winners)} winners"


def test_values_replace_and_expire(backend: ResultBackend) -> None:
    assert backend.get_value("beat:last") is None
    backend.set_value("beat:last", b"1")
    backend.set_value("beat:last", b"2")
    assert backend.get_value("beat:last") == b"2"
    backend.set_value("short", b"x", ttl=0.3)
    assert backend.get_value("short") == b"x"
    _eventually(lambda: backend.get_value("short") is None, timeout=3)
    assert backend.get_value("beat:last") == b"2"


def test_delete_value_removes_only_that_value(backend: ResultBackend) -> None:
    # Given two values, a claim and a record under the same name
    backend.set_value("worker:1", b"alive", ttl=30)
    backend.set_value("worker:2", b"alive")
    assert backend.claim("worker:1", ttl=30)
    backend.set("worker:1", State.SUCCESS, b"record", ttl=30)
    # When one value is deleted (and a missing one, which is no error)
    backend.delete_value("worker:1")
    backend.delete_value("never-set")
    # Then it reads as never set, and nothing else moved
    assert backend.get_value("worker:1") is None
    assert backend.get_value("worker:2") == b"alive"
    assert not backend.claim("worker:1", ttl=30)
    assert backend.get("worker:1") == b"record"


def _race(attempt: Callable[[int], bool], threads: int) -> list[bool]:
    """Run ``attempt`` in ``threads`` threads released at the same instant; their results."""
    barrier = threading.Barrier(threads)
    results: list[bool] = [False] * threads

    def run(i: int) -> None:
        barrier.wait(timeout=10)
        results[i] = attempt(i)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=20)
    assert not any(t.is_alive() for t in workers)
    return results


def _eventually(check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_the_holder_of_a_lease_can_be_read(backend: ResultBackend) -> None:
    assert backend.lease_holder("beat:shop") is None
    assert backend.acquire_lease("beat:shop", "beat-a", ttl=30)
    assert backend.lease_holder("beat:shop") == "beat-a"
    backend.release_lease("beat:shop", "beat-a")
    assert backend.lease_holder("beat:shop") is None
