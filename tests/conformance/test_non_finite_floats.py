"""inf and nan are refused, never turned into null, in arguments and in results (issue 11, item 13).

JSON has no inf or nan; msgspec (like most strict encoders) writes them as ``null``, so a task
returning ``float("inf")`` used to be stored as SUCCESS with the value None, and an argument
``inf`` arrived as None. The rule now: ``delay()`` raises EncodeError naming the argument and
sends nothing; a result that holds one is recorded as FAILURE with an EncodeError naming where
it sits. Run on every broker and result backend (memory, sqlite, redis; amqp with SQLite results).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor import App, EncodeError, State, TaskFailed
from conveyor.testing import drain


@pytest.fixture
def app(broker_url: str, backend_url: str) -> Iterator[App]:
    instance = App("floats", broker=broker_url, backend=backend_url)
    yield instance
    instance.close()


def queued(app: App) -> int:
    return sum(s.ready + s.scheduled + s.in_flight + s.dead for s in app.broker.stats())


@pytest.mark.parametrize(
    ("args", "kwargs", "where", "shown"),
    [
        ((math.inf,), {}, "args[0]", "inf"),
        ((1, {"x": [1.0, math.nan]}), {}, "args[1]['x'][1]", "nan"),
        ((), {"limit": -math.inf}, "kwargs['limit']", "-inf"),
    ],
)
def test_a_non_finite_argument_is_refused_at_delay_naming_it(
    app: App, args: tuple[Any, ...], kwargs: dict[str, Any], where: str, shown: str
) -> None:
    # Given a task
    @app.task(name="takes")
    def takes(*a: Any, **kw: Any) -> None:
        return None

    # When it is sent a non-finite float (at any depth)
    with pytest.raises(EncodeError) as refused:
        takes.delay(*args, **kwargs)
    # Then delay() says which argument and why, and nothing was sent
    assert refused.value.argument == where
    assert f"argument {where} is {shown}" in str(refused.value)
    assert "JSON" in str(refused.value)
    assert queued(app) == 0


@pytest.mark.parametrize(
    ("value", "where", "shown"),
    [(math.inf, "value", "inf"), ({"ratio": [0.5, math.nan]}, "value['ratio'][1]", "nan")],
)
def test_a_non_finite_result_is_recorded_as_failure_naming_it(app: App, value: Any, where: str, shown: str) -> None:
    # Given a task that returns a non-finite float (at any depth)
    @app.task(name="ratio")
    def ratio() -> Any:
        return value

    r = ratio.delay()
    # When a worker runs it
    drain(app, timeout=5)
    # Then the result is FAILURE with an EncodeError that names the value, not SUCCESS with None
    assert r.state is State.FAILURE
    with pytest.raises(TaskFailed) as failed:
        r.get(timeout=1)
    assert failed.value.type_name == "conveyor.errors.EncodeError"
    assert f"{where} is {shown}" in failed.value.remote_message
    assert queued(app) == 0


def test_finite_floats_and_none_still_travel(app: App) -> None:
    # Given a task that echoes its argument
    @app.task(name="echo")
    def echo(x: Any) -> Any:
        return x

    # When it is sent large floats, None and the string "null"
    sent = [1e308, -1e-308, None, "null", {"n": None}]
    r = echo.delay(sent)
    drain(app, timeout=5)
    # Then they arrive and come back unchanged
    assert r.get(timeout=1) == sent


def test_a_non_finite_float_inside_a_dataclass_is_found_too(app: App) -> None:
    # Given a task whose argument is a dataclass (msgspec sends its fields)
    @dataclasses.dataclass
    class Point:
        x: float
        y: float

    @app.task(name="plot")
    def plot(point: Any) -> None:
        return None

    # When one of its fields is nan, then delay() names it
    with pytest.raises(EncodeError, match=r"argument args\[0\]\['y'\] is nan"):
        plot.delay(Point(1.0, math.nan))
