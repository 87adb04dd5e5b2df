"""Revoking a running task, as a Celery user did (issue 14, friction 10), on a real worker.

The user revoked a running ``slow`` task: ``get()`` said "revoked" at once, then the task succeeded and
the state became SUCCESS. Now a revocation is final: the state stays REVOKED whatever the worker does
afterwards, ``get()`` raises ``TaskRevoked``, and ``conveyor revoke`` of an id that never existed (or of
a task that already finished) says so and exits 1.
"""

from __future__ import annotations

import pytest

from conveyor import App, ResultMissing, State, TaskRevoked
from tests.apps import newcomer_app
from tests.conftest import wait_until
from tests.e2e.newcomer import ShopWorker, cli, shop, shop_env, shop_worker

__all__ = ["shop", "shop_env", "shop_worker"]  # fixtures

APP = "tests.apps.newcomer_app:app"


def test_a_revoked_running_task_stays_revoked_after_it_ends(
    shop: App, shop_worker: ShopWorker, shop_env: dict[str, str]
) -> None:
    r = newcomer_app.resize.delay("big.png", 1.5)
    wait_until(lambda: r.state is State.STARTED, 20, "the task to start")
    assert r.revoke() is False  # not waiting in its queue: it runs
    with pytest.raises(TaskRevoked) as info:
        r.get(timeout=5)
    assert isinstance(info.value, ResultMissing)  # what get() raised before: old except clauses still match

    # The task runs to its end on the worker; its result is discarded and the state stays final.
    shop_worker.wait_for_log(f"resize[{r.id}] succeeded", timeout=20)
    assert r.state is State.REVOKED
    with pytest.raises(TaskRevoked):
        r.get(timeout=1)

    # A task revoked while another runs (queued, or reserved by the busy worker) never runs.
    blocker = newcomer_app.resize.delay("first.png", 1.0)
    wait_until(lambda: blocker.state is State.STARTED, 20, "the blocker to start")
    queued = newcomer_app.resize.delay("never.png")
    queued.revoke()
    assert blocker.get(timeout=20) == "resized first.png"
    done = newcomer_app.charge.delay(1, 2)  # runs after the revoked one would have
    assert done.get(timeout=20) == "charged 2 EUR for order 1"
    assert queued.state is State.REVOKED
    assert f"resize[{queued.id}] succeeded" not in shop_worker.output()


def test_conveyor_revoke_says_what_it_found(shop: App, shop_worker: ShopWorker, shop_env: dict[str, str]) -> None:
    finished = newcomer_app.charge.delay(1, 2)
    assert finished.get(timeout=20) == "charged 2 EUR for order 1"
    running = newcomer_app.resize.delay("slow.png", 15.0)  # still running when the command (a fresh interpreter) acts
    wait_until(lambda: running.state is State.STARTED, 20, "the task to start")

    never = "0" * 32
    done = cli(shop_env, "revoke", APP, never, finished.id, running.id)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert f"{never}: unknown id: no task with this id is queued and nothing is recorded" in done.stderr
    assert f"{finished.id}: not revoked: it already finished (SUCCESS); its result stands" in done.stderr
    assert f"{running.id}: revoked (running: it runs to its end, but its result is discarded" in done.stdout
    assert finished.get(timeout=1) == "charged 2 EUR for order 1"  # the revocation changed nothing
    assert running.state is State.REVOKED
