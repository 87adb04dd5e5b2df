"""countdown, eta and expires read times alike (issue 14, friction 1).

A Celery user wrote ``apply_async(expires=5)`` and lost the task: the call option read 5 as a Unix
timestamp from 1970 while the task option read it as seconds. Now a number or a ``timedelta`` is
that long from now for all three options, an aware ``datetime`` is that moment, and a naive
datetime or a timestamp-sized number is refused with an error that says what to pass.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator

import pytest

from conveyor import App, ConfigurationError, State
from conveyor.message import decode
from conveyor.testing import drain

UTC = datetime.UTC


@pytest.fixture
def app() -> Iterator[App]:
    instance = App("times", broker="memory://")
    yield instance
    instance.close()


def sent(app: App) -> dict[str, float | None]:
    """The eta and expires of the one message waiting in the broker, relative to its creation time."""
    [delivery] = app.broker.reserve(["default"], 1, owner="test", lease=30, timeout=0.0)
    message = decode(delivery.body)
    return {
        "eta": None if message.eta is None else round(message.eta - message.created, 3),
        "expires": None if message.expires is None else round(message.expires - message.created, 3),
    }


def test_expires_as_seconds_lets_the_task_run_as_the_user_expected(app: App) -> None:
    @app.task
    def charge(order_id: int, amount: int) -> str:
        return f"charged {amount} for {order_id}"

    r = charge.apply_async((1, 2), expires=5)
    drain(app, timeout=5)
    assert r.get(timeout=1) == "charged 2 for 1"


@pytest.mark.parametrize(
    "option",
    [
        {"expires": 30},
        {"expires": 30.0},
        {"expires": datetime.timedelta(seconds=30)},
        {"countdown": 30},
        {"countdown": datetime.timedelta(seconds=30)},
        {"eta": 30},
        {"eta": datetime.timedelta(seconds=30)},
    ],
    ids=repr,
)
def test_numbers_and_timedeltas_are_seconds_from_now_for_every_option(app: App, option: dict[str, object]) -> None:
    @app.task(name="t")
    def t() -> None: ...

    t.apply_async(**option)  # type: ignore[arg-type]  # a dict of options: mypy cannot check it here
    [name] = option
    if name == "expires":
        assert sent(app) == {"eta": None, "expires": 30.0}
    else:  # countdown and eta put it in the schedule 30 s ahead
        [stats] = app.broker.stats()
        assert stats.scheduled == 1


def test_aware_datetimes_are_moments_for_eta_and_expires(app: App) -> None:
    @app.task(name="t")
    def t() -> None: ...

    soon = datetime.datetime.now(UTC) + datetime.timedelta(seconds=0.2)
    r = t.apply_async(eta=soon, expires=soon + datetime.timedelta(seconds=30))
    assert app.broker.stats()[0].scheduled == 1
    drain(app, timeout=5)
    assert r.state is State.SUCCESS


def test_the_task_option_accepts_a_timedelta_and_means_the_same(app: App) -> None:
    @app.task(name="t", expires=datetime.timedelta(minutes=1))
    def t() -> None: ...

    assert t.options.expires == 60.0
    t.delay()
    assert sent(app) == {"eta": None, "expires": 60.0}


@pytest.mark.parametrize("name", ["eta", "expires"])
def test_a_naive_datetime_is_refused_with_the_fix(app: App, name: str) -> None:
    @app.task(name="t")
    def t() -> None: ...

    with pytest.raises(ConfigurationError, match=f"{name} must be timezone-aware.*datetime.UTC"):
        t.apply_async(**{name: datetime.datetime.now()})  # type: ignore[arg-type]
    assert app.broker.stats() == [] or app.broker.stats()[0].ready == 0


@pytest.mark.parametrize("name", ["eta", "expires", "countdown"])
def test_a_unix_timestamp_is_refused_rather_than_read_as_31_years(app: App, name: str) -> None:
    @app.task(name="t")
    def t() -> None: ...

    stamp = datetime.datetime.now(UTC).timestamp() + 60
    with pytest.raises(ConfigurationError, match=f"{name}=.* looks like a Unix timestamp"):
        t.apply_async(**{name: stamp})  # type: ignore[arg-type]


def test_countdown_and_eta_together_are_refused(app: App) -> None:
    @app.task(name="t")
    def t() -> None: ...

    with pytest.raises(ConfigurationError, match="countdown or eta, not both"):
        t.apply_async(countdown=1, eta=datetime.timedelta(seconds=2))


def test_a_string_is_refused_naming_what_is_accepted(app: App) -> None:
    @app.task(name="t")
    def t() -> None: ...

    with pytest.raises(ConfigurationError, match=r"expires must be seconds from now .* got '5'"):
        t.apply_async(expires="5")  # type: ignore[arg-type]
