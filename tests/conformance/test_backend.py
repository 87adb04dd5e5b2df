"""The result backend contract (backends/base.py), run unchanged over every backend kind."""

from __future__ import annotations

import threading
import time

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
