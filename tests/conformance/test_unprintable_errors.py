"""An exception that cannot be rendered still fails its task cleanly, on every broker (issue 11, item 11).

``str()`` (and ``repr()``) of a user's exception may raise. The worker renders it in the result
record, the retry log line, the RETRY record and the dead-letter reason; each uses a stand-in
such as ``<unprintable Unprintable: __str__ raised RuntimeError>`` instead of failing itself.
The end-to-end twin (a real worker, both pools) is in tests/e2e/test_delivery_holes_errors.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from conveyor import App, State, TaskFailed
from conveyor.testing import drain
from tests.apps.e2e_app import Unprintable

FALLBACK = "<unprintable Unprintable: __str__ raised RuntimeError>"


@pytest.fixture
def app(broker_url: str, backend_url: str) -> Iterator[App]:
    instance = App("unprintable", broker=broker_url, backend=backend_url)
    yield instance
    instance.close()


def test_a_retried_unprintable_exception_keeps_every_attempt_with_a_stand_in(app: App) -> None:
    # Given a task with one retry that raises an unprintable exception every time
    runs: list[int] = []

    @app.task(name="flaky", retries=1, backoff=0.01)
    def flaky() -> None:
        runs.append(1)
        raise Unprintable("secret")

    r = flaky.delay()
    # When the worker runs it to its end
    drain(app, timeout=5)
    # Then both attempts ran and are recorded with the stand-in, and the final state is FAILURE
    assert len(runs) == 2
    assert r.state is State.FAILURE
    assert [e.message for e in r.errors] == [FALLBACK, FALLBACK]
    with pytest.raises(TaskFailed, match="Unprintable: <unprintable"):
        r.get(timeout=1)
    assert app.broker.dead_letters() == []


def test_an_unprintable_exception_names_its_type_in_the_dead_letter_reason(app: App) -> None:
    # Given a task that dead-letters on failure and raises an unprintable exception
    @app.task(name="doomed", dead_letter_on_failure=True)
    def doomed() -> None:
        raise Unprintable("secret")

    r = doomed.delay()
    # When the worker runs it
    drain(app, timeout=5)
    # Then the result is FAILURE and the dead letter's reason carries the stand-in
    assert r.state is State.FAILURE
    [dead] = app.broker.dead_letters()
    assert dead.reason == f"failed after 1 attempt(s): tests.apps.e2e_app.Unprintable: {FALLBACK}"
