"""How a project tests its conveyor tasks with the pytest plugin (docs/testing.md); the suite runs this file."""

from __future__ import annotations

import datetime
from collections.abc import Callable

import pytest
from shop.tasks import checkout, flaky_charge, refund, send_receipt, ship_by

from conveyor import App, State
from conveyor.testing import WorkerProcess, drain


def test_eager_runs_the_task_before_delay_returns(conveyor_eager: App) -> None:
    assert send_receipt.delay(42).get(timeout=1) == "receipt for 42 sent"
    assert ship_by.delay(datetime.date(2024, 2, 28), 2).get(timeout=1) == datetime.date(2024, 3, 1)


def test_eager_retries_and_failures_behave_as_on_a_worker(conveyor_eager: App) -> None:
    r = flaky_charge.delay(7)  # its retry's backoff (up to 30 s) is not waited for
    assert r.get(timeout=1) == "charged 7"
    assert [e.type for e in r.errors] == ["TimeoutError"]  # the failed attempt is kept
    with pytest.raises(ValueError, match="never charged"):
        refund.delay(7).get(timeout=1)


def test_countdowns_are_not_waited_for(conveyor_eager: App) -> None:
    assert send_receipt.apply_async((5,), countdown=3600).get(timeout=1) == "receipt for 5 sent"


def test_tasks_sent_by_a_task_run_too(conveyor_eager: App) -> None:
    assert checkout.delay(9).get(timeout=1) == "ok"
    assert conveyor_eager.broker.stats()[0].ready == 0


def test_memory_then_drain_when_the_test_decides(conveyor_memory: App) -> None:
    r = send_receipt.delay(1)
    assert r.state is State.PENDING  # nothing runs until the test drains
    drain(conveyor_memory)
    assert r.get(timeout=1) == "receipt for 1 sent"


def test_a_real_worker_runs_the_task(conveyor_worker: Callable[..., WorkerProcess]) -> None:
    conveyor_worker("shop.tasks:app", "-c", "1")
    assert ship_by.delay(datetime.date(2024, 12, 30), 3).get(timeout=20) == datetime.date(2025, 1, 2)
