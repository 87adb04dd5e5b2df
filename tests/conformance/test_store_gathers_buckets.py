"""The gather and token-bucket primitives of the Store contract (chords, global rate limits), over every backend."""

from __future__ import annotations

import threading
import time

from conveyor.backends import ResultBackend
from conveyor.states import State


def test_gather_counts_each_slot_once_and_keeps_the_latest_value(backend: ResultBackend) -> None:
    assert backend.gathered("g1") == {}
    assert backend.gather("g1", 0, b"a", ttl=60) == 1
    assert backend.gather("g1", 2, b"c", ttl=60) == 2
    # A member run twice (redelivered) fills its slot again: not counted twice
    assert backend.gather("g1", 0, b"a2", ttl=60) == 2
    assert backend.gathered("g1") == {0: b"a2", 2: b"c"}
    backend.delete_gather("g1")
    assert backend.gathered("g1") == {}


def test_concurrent_gathers_count_every_slot(backend: ResultBackend) -> None:
    counts: list[int] = []
    lock = threading.Lock()

    def fill(i: int) -> None:
        n = backend.gather("g2", i, str(i).encode(), ttl=60)
        with lock:
            counts.append(n)

    threads = [threading.Thread(target=fill, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    # Exactly one caller saw the last slot filled; every count from 1 to 20 was seen once
    assert sorted(counts) == list(range(1, 21))
    assert len(backend.gathered("g2")) == 20


def test_gathers_expire_after_their_ttl(backend: ResultBackend) -> None:
    backend.gather("g3", 0, b"x", ttl=0.2)
    time.sleep(0.3)
    assert backend.gathered("g3") == {}
    assert backend.gather("g3", 1, b"y", ttl=60) == 1


def test_token_bucket_gives_its_burst_then_reserves_tokens_ahead_at_its_rate(backend: ResultBackend) -> None:
    # Given a bucket of 1 token a second with a burst of 3 (slow enough that the calls' own time hardly counts)
    waits = [backend.take_token("b1", rate=1.0, burst=3.0) for _ in range(5)]
    # The burst is taken at once; the next callers are each given a later token, a second apart
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert 0.5 < waits[3] <= 1.0
    assert 1.5 < waits[4] <= 2.0
    assert 0.7 < waits[4] - waits[3] <= 1.0
    # A bucket refills: two tokens of a 20/s bucket of one, then a rest, and the next is there at once
    assert backend.take_token("b2", rate=20.0, burst=1.0) == 0.0
    assert 0.0 < backend.take_token("b2", rate=20.0, burst=1.0) <= 0.05
    time.sleep(0.2)
    assert backend.take_token("b2", rate=20.0, burst=1.0) == 0.0


def test_get_many_reads_records_in_order(backend: ResultBackend) -> None:
    backend.set("m1", State.SUCCESS, b"one", ttl=60)
    backend.set("m3", State.STARTED, b"three", ttl=60)
    assert backend.get_many(["m3", "m2", "m1"]) == [b"three", None, b"one"]
    assert backend.get_many([]) == []
