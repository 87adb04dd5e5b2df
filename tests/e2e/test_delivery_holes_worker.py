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


# -- item 8: a task holding the GIL keeps its lease ---------------------------------------------


#: RabbitMQ holds a delivery on the child's own channel: the supervisor cannot extend it
#: (extend_owner returns 0), and the child's local lease is still a thread the GIL starves. The AMQP
#: helper (branch fix-amqp) makes it GIL-proof; until that merges this case may run the task twice.
AMQP_LOCAL_LEASE = pytest.mark.xfail(reason="AMQP local lease starved by the GIL: fixed on fix-amqp", strict=False)


@pytest.mark.parametrize("e2e_env", ["sqlite", "redis", pytest.param("amqp", marks=AMQP_LOCAL_LEASE)], indirect=True)
@pytest.mark.parametrize("pool", [("-c", "1"), ("--pool", "thread", "-c", "2")], ids=["process", "thread"])
def test_a_task_holding_the_gil_longer_than_its_lease_runs_once(
    e2e_env: dict[str, str],
    e2e_app: App,
    start_worker: Callable[..., WorkerProcess],
    records: Path,
    pool: tuple[str, ...],
) -> None:
    # Given two live workers with a 2 s lease
    e2e_env["CONVEYOR_LEASE"] = "2"
    workers = [start_worker(*pool), start_worker(*pool)]
    # When a task holds the GIL for 6 s (a C call that never releases it: its child's heartbeat thread starves)
    result = enqueue(e2e_app, "gil_sleep", "gil", 6)
    # Then it ends once, was never handed to the other worker, and no lease was lost
    assert result.get(timeout=30) == "gil"
    wait_until(lambda: all(w.proc.poll() is None for w in workers), 1, "the workers to be alive")
    for worker in workers:
        assert worker.stop() == 0
    assert runs_of(records, "gil") == 1, (records / "gil.runs").read_text()
    logs = "".join(w.output() for w in workers)
    assert "was lost" not in logs, logs
