"""The pytest plugin: fixtures for testing code that uses conveyor (loaded by pytest when conveyor is installed).

pytest finds it through the ``pytest11`` entry point, so a project that installs conveyor gets
the fixtures without a ``conftest.py`` line. Each fixture is a thin wrapper over a helper in
:mod:`conveyor.testing`, which works without pytest too:

- ``conveyor_app``: the app under test. A fresh ``App("tests", broker="memory://")`` by default;
  override it in your ``conftest.py`` to return your own app (``return shop.tasks.app``).
- ``conveyor_memory``: ``conveyor_app`` on a fresh in-memory broker and backend for this test
  (:func:`~conveyor.testing.in_memory`); run what was sent with :func:`~conveyor.testing.drain`.
- ``conveyor_eager``: the same, and every ``delay()`` runs its task before it returns, through the
  worker's middleware, countdowns and retry delays skipped (:func:`~conveyor.testing.eager`).
- ``conveyor_worker``: start real ``conveyor worker`` subprocesses on a SQLite queue of this test
  (``conveyor_worker("shop.tasks:app", "-c", "2")``), stopped when the test ends
  (:func:`~conveyor.testing.run_worker`).

Fixture names start with ``conveyor_`` so that they never clash with a project's own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor.app import App
from conveyor.testing import WorkerProcess, eager, in_memory, run_worker, use_broker


@pytest.fixture
def conveyor_app() -> Iterator[App]:
    """The app under test: override this fixture to return your own app; by default an in-memory one."""
    app = App("tests", broker="memory://")
    yield app
    app.close()


@pytest.fixture
def conveyor_memory(conveyor_app: App) -> Iterator[App]:
    """``conveyor_app`` on a fresh in-memory broker and backend, for this test alone."""
    with in_memory(conveyor_app) as app:
        yield app


@pytest.fixture
def conveyor_eager(conveyor_memory: App) -> Iterator[App]:
    """``conveyor_memory``, where each ``delay()`` runs its task (and what it sends) before returning,
    without waiting for a countdown, an eta or a retry's backoff."""
    with eager(conveyor_memory) as app:
        yield app


@pytest.fixture
def conveyor_worker(conveyor_app: App, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real ``conveyor worker TARGET ARGS...`` subprocesses; they and ``conveyor_app`` share a SQLite
    queue in this test's ``tmp_path``, unless ``broker=`` names another (a Redis URL, say). Each worker
    has registered with the broker when the call returns; all are stopped (SIGTERM) when the test ends.
    """
    default = f"sqlite:///{tmp_path / 'conveyor-test.db'}"
    with contextlib.ExitStack() as stack:
        on: list[str] = []  # the broker URLs the app was moved onto, latest last

        def start(target: str, *args: str, broker: str | None = None, **options: Any) -> WorkerProcess:
            url = broker or default
            if not on or on[-1] != url:
                stack.enter_context(use_broker(conveyor_app, url))
                on.append(url)
            return stack.enter_context(run_worker(conveyor_app, target, *args, **options))

        yield start
