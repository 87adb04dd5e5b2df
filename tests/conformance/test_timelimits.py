"""Soft time limits raise TimeLimitExceeded inside the task, in the main thread and in threads."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from conveyor import App, TimeLimitExceeded
from conveyor.testing import drain


@pytest.fixture
def app(broker_url: str, backend_url: str) -> Iterator[App]:
    instance = App("limits", broker=broker_url, backend=backend_url)
    yield instance
    instance.close()


def test_soft_limit_interrupts_a_blocking_call_and_is_catchable(app: App) -> None:
    @app.task(name="slow", soft_time_limit=0.2)
    def slow() -> str:
        try:
            time.sleep(5)
        except TimeLimitExceeded:
            return "cleaned up"
        return "finished"

    r = slow.delay()
    started = time.monotonic()
    drain(app)
    assert r.get(timeout=1) == "cleaned up"
    assert time.monotonic() - started < 2


def test_soft_limit_in_a_thread_slot_fails_the_task(app: App) -> None:
    @app.task(name="spin", soft_time_limit=0.2)
    def spin() -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            time.sleep(0.01)

    r = spin.delay()
    thread = threading.Thread(target=drain, args=(app,))
    thread.start()
    thread.join(timeout=10)
    with pytest.raises(TimeLimitExceeded):
        r.get(timeout=1)


def test_soft_limit_on_an_async_task(app: App) -> None:
    import asyncio

    @app.task(name="asleep", soft_time_limit=0.2)
    async def asleep() -> None:
        await asyncio.sleep(5)

    r = asleep.delay()
    drain(app)
    with pytest.raises(TimeLimitExceeded):
        r.get(timeout=1)


def test_no_limit_does_not_fire_late(app: App) -> None:
    @app.task(name="quick", soft_time_limit=0.2)
    def quick() -> int:
        return 1

    r = quick.delay()
    drain(app)
    time.sleep(0.3)  # past the limit: nothing must be raised into this thread now
    assert r.get(timeout=1) == 1
