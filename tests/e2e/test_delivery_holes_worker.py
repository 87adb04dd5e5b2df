"""Delivery holes of the worker itself (issue 11): a poison task's batch-mates, a GIL-holding task's
lease, and a result backend that goes down while the broker stays up.

Each test starts real ``conveyor worker`` processes (tests/e2e/conftest.py) on the brokers the
scenario applies to.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from conveyor import App, State
from tests.apps.e2e_app import runs_of
from tests.e2e.conftest import WorkerProcess, enqueue, wait_until

# -- item 9: a poison task takes only itself down ----------------------------------------------


@pytest.mark.parametrize("e2e_env", ["sqlite", "redis"], indirect=True)
def test_a_segfaulting_task_does_not_bury_its_never_started_batch_mates(
    e2e_env: dict[str, str], e2e_app: App, start_worker: Callable[..., WorkerProcess], records: Path
) -> None:
    # Given a task that segfaults its process, and five trivial tasks queued behind it (one prefetch
    # batch with the default prefetch and max_deliveries); a 30 s lease, so only the crash returns them
    e2e_env["CONVEYOR_LEASE"] = "30"
    poison = enqueue(e2e_app, "segfault", "poison")
    innocents = [enqueue(e2e_app, "record", f"innocent{i}") for i in range(5)]
    # When a one-process worker serves them: each delivery of the poison kills its child
    start_worker("-c", "1")
    wait_until(lambda: len(e2e_app.broker.dead_letters()) >= 1, 30, "the poison task to be dead-lettered")
    # Then the five innocent tasks run to SUCCESS, and only the poison is dead-lettered
    for i, result in enumerate(innocents):
        assert result.get(timeout=20) == f"innocent{i}"
    assert [d.id for d in e2e_app.broker.dead_letters()] == [poison.id]
    assert runs_of(records, "poison") == e2e_app.settings.max_deliveries
    assert [runs_of(records, f"innocent{i}") for i in range(5)] == [1] * 5
    assert all(r.state is State.SUCCESS for r in innocents)
