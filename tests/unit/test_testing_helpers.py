"""conveyor.testing's in-process helpers: use_broker / in_memory restore the app, eager runs through the pipeline."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from conveyor import App, State
from conveyor.errors import ConfigurationError
from conveyor.testing import drain, eager, in_memory, run_worker, urls, use_broker
from conveyor.worker.events import Ended


def test_in_memory_gives_a_fresh_broker_and_restores_the_apps_own() -> None:
    app = App("helpers", broker="memory://")

    @app.task
    def double(x: int) -> int:
        return 2 * x

    own = app.broker
    with in_memory(app):
        assert app.broker is not own and urls(app) == ("memory://", "memory://")
        r = double.delay(2)
        with eager(app):
            assert double.delay(4).get(timeout=1) == 8
            assert r.state is State.SUCCESS  # eager drains what was waiting too
        assert app.send.__func__ is App.send  # type: ignore[attr-defined]  # eager is undone
    assert app.broker is own and sum(s.ready for s in own.stats()) == 0
    app.close()


def test_eager_runs_an_adelay_too_and_undoes_it() -> None:
    app = App("helpers", broker="memory://")

    @app.task
    def double(x: int) -> int:
        return 2 * x

    async def call() -> int:
        return await (await double.adelay(5)).aget(timeout=1)

    with eager(app):
        assert asyncio.run(call()) == 10
    assert app.asend.__func__ is App.asend  # type: ignore[attr-defined]  # eager is undone
    app.close()


def test_run_worker_refuses_a_broker_no_other_process_can_see() -> None:
    app = App("helpers", broker="memory://")
    with pytest.raises(ConfigurationError, match="other processes reach"), run_worker(app, "x:app"):
        pass


def test_drain_can_skip_delays_on_the_memory_broker_only(tmp_path: Path) -> None:
    app = App("helpers", broker="memory://")

    @app.task
    def later() -> str:
        return "ran"

    r = later.apply_async(countdown=3600)
    assert drain(app, include_scheduled=False) == []
    assert [o.state for o in drain(app, skip_delays=True)] == [Ended.SUCCESS] and r.get(timeout=1) == "ran"
    app.close()
    queue = f"sqlite:///{tmp_path / 'q.db'}"
    with use_broker(app, queue), pytest.raises(ConfigurationError, match="skip_delays needs the memory broker"):
        drain(app, skip_delays=True)
