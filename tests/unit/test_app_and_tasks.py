"""App and Task without a worker: names, options, settings and the messages they build, on the memory broker.

What a worker then does with the messages, on every broker, is tests/conformance/test_executor.py.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from conveyor import App, ConfigurationError, EncodeError, ResultTimeout


@pytest.fixture
def app() -> Iterator[App]:
    instance = App("test", broker="memory://")
    yield instance
    instance.close()


def test_task_name_defaults_to_module_and_qualname(app: App) -> None:
    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    assert add.name == f"{__name__}.test_task_name_defaults_to_module_and_qualname.<locals>.add"
    assert add(2, 3) == 5  # calling the task runs it inline


def test_unknown_task_option_fails_at_decoration(app: App) -> None:
    options: dict[str, Any] = {"retires": 3}  # mypy refuses the typo itself (tests/typing/check_tasks.py)
    with pytest.raises(ConfigurationError, match="retires") as failure:

        @app.task(**options)
        def f() -> None: ...

    # The error names every option and the feature that owns it.
    assert "backoff, backoff_max, retries, retry_on (Retries)" in str(failure.value)
    assert "ignore_result (Results)" in str(failure.value)


def test_unknown_setting_fails_at_app_creation() -> None:
    with pytest.raises(ConfigurationError, match="leese"):
        App("x", broker="memory://", leese=3)  # type: ignore[call-arg]  # mypy catches it too


def test_unserializable_argument_fails_at_delay_naming_it(app: App) -> None:
    @app.task(name="store")
    def store(a: int, when: object) -> None: ...

    with pytest.raises(EncodeError, match=r"kwargs\['when'\]") as info:
        store.delay(1, when=object())
    assert info.value.argument == "kwargs['when']"
    assert app.broker.stats() == []  # nothing was sent


def test_naive_eta_is_rejected(app: App) -> None:
    @app.task(name="t")
    def t() -> None: ...

    with pytest.raises(ConfigurationError, match="timezone-aware"):
        t.apply_async(eta=datetime.datetime.now())


def test_get_times_out(app: App) -> None:
    @app.task(name="t")
    def t() -> None: ...

    with pytest.raises(ResultTimeout):
        t.delay().get(timeout=0.1)


def test_environment_overrides_keyword_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_LEASE", "7.5")
    monkeypatch.setenv("CONVEYOR_TRACK_STARTED", "false")
    app = App("x", broker="memory://", lease=3)
    assert (app.settings.lease, app.settings.track_started) == (7.5, False)
    monkeypatch.setenv("CONVEYOR_LEASE", "soon")
    with pytest.raises(ConfigurationError, match="CONVEYOR_LEASE"):
        App("x", broker="memory://")
    monkeypatch.delenv("CONVEYOR_LEASE")
    monkeypatch.setenv("CONVEYOR_LEESE", "1")
    with pytest.raises(ConfigurationError, match="CONVEYOR_LEESE"):
        App("x", broker="memory://")


def test_missing_extra_or_unknown_scheme_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="known schemes"):
        App("x", broker="kafka://localhost").broker  # noqa: B018


def test_unknown_call_option_is_an_error(app: App) -> None:
    @app.task(name="t")
    def t() -> None: ...

    with pytest.raises(ConfigurationError, match="prioritty"):
        t.apply_async(prioritty=3)  # type: ignore[call-arg]


def test_delay_builds_the_same_message_as_a_call_with_options(app: App) -> None:
    # Given a task with a queue, a priority, retries and an expiry of its own
    @app.task(name="report", queue="reports", priority=4, retries=2, expires=60)
    def report(day: str, lang: str = "en") -> None: ...

    # When it is sent by delay() (no call options) and by apply_async() with an explicit no-op option
    fast = report.message(("mon",), {"lang": "fr"})
    full = report.message(("mon",), {"lang": "fr"}, priority=None)
    # Then both messages agree on everything but their fresh id and creation time
    assert fast.id != full.id and len(fast.id) == 32
    assert abs(fast.created - full.created) < 5
    assert fast.expires is not None and abs(fast.expires - fast.created - 60) < 1e-6
    same = {"id": full.id, "created": full.created, "expires": full.expires}
    assert msgspec.structs.replace(fast, **same) == full
