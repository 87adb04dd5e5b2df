"""App, Task and AsyncResult on every broker (memory, SQLite, Redis), run in-process with conveyor.testing.drain."""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from conveyor import App, ConfigurationError, EncodeError, ResultTimeout, Retry, State, TaskFailed, current_context
from conveyor.message import decode
from conveyor.testing import drain


@pytest.fixture
def app(broker_url: str, backend_url: str) -> Iterator[App]:
    instance = App("test", broker=broker_url, backend=backend_url, track_started=True)
    yield instance
    instance.close()


def test_task_name_defaults_to_module_and_qualname(app: App) -> None:
    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    assert add.name == f"{__name__}.test_task_name_defaults_to_module_and_qualname.<locals>.add"
    assert add(2, 3) == 5  # calling the task runs it inline


def test_delay_sends_a_message_and_the_worker_stores_the_result(app: App) -> None:
    @app.task(name="add")
    def add(a: int, b: int) -> int:
        return a + b

    r = add.delay(2, 3)
    assert r.state is State.PENDING
    assert not r.ready()
    [outcome] = drain(app)
    assert outcome.state == "SUCCESS"
    assert r.get(timeout=1) == 5
    assert (r.state, r.ready(), r.successful(), r.result, r.progress) == (State.SUCCESS, True, True, 5, 1.0)


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


def test_failure_is_recorded_with_its_traceback(app: App) -> None:
    @app.task(name="boom")
    def boom() -> None:
        raise ValueError("kaboom")

    r = boom.delay()
    drain(app)
    assert r.state is State.FAILURE
    with pytest.raises(TaskFailed, match="ValueError: kaboom") as info:
        r.get(timeout=1)
    assert "raise ValueError" in info.value.traceback
    assert r.get(timeout=1, propagate=False) is None
    assert r.traceback is not None and "kaboom" in r.traceback


def test_retries_with_backoff_keep_each_attempts_traceback(app: App) -> None:
    calls: list[int] = []

    @app.task(name="flaky", retries=2, backoff=0.01, retry_on=(ConnectionError,))
    def flaky() -> str:
        ctx = current_context()
        calls.append(ctx.attempt)
        if ctx.attempt < 2:
            raise ConnectionError(f"try {ctx.attempt}")
        return "ok"

    r = flaky.delay()
    drain(app)
    assert r.get(timeout=1) == "ok"
    assert calls == [0, 1, 2]


def test_retry_gives_up_after_max_and_non_matching_errors_fail_at_once(app: App) -> None:
    @app.task(name="always", retries=1, backoff=0.01, retry_on=(ConnectionError,))
    def always(kind: str) -> None:
        raise ConnectionError("down") if kind == "conn" else KeyError("nope")

    a, b = always.delay("conn"), always.delay("key")
    drain(app)
    assert [e.type for e in a.errors] == ["ConnectionError", "ConnectionError"]
    assert [e.type for e in b.errors] == ["KeyError"]


def test_raise_retry_from_inside_a_task(app: App) -> None:
    @app.task(name="later", retries=1)
    def later() -> int:
        if current_context().attempt == 0:
            raise Retry(countdown=0.05, reason="not yet")
        return 7

    r = later.delay()
    started = time.monotonic()
    drain(app)
    assert r.get(timeout=1) == 7
    assert time.monotonic() - started >= 0.05


def test_async_tasks_run_on_the_event_loop(app: App) -> None:
    @app.task(name="double")
    async def double(x: int) -> int:
        return x * 2

    r = double.delay(21)
    drain(app)
    assert r.get(timeout=1) == 42


def test_countdown_and_eta_wait_in_the_schedule(app: App) -> None:
    @app.task(name="t")
    def t() -> int:
        return 1

    # 1 s, not less: on a loaded machine (8 suites on 2 cores) 0.2 s passed before the first drain looked.
    r1 = t.apply_async(countdown=1)
    r2 = t.apply_async(eta=datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=1))
    [stats] = app.broker.stats()
    assert stats.scheduled == 2
    assert drain(app, include_scheduled=False) == []
    drain(app, timeout=5)
    assert (r1.get(timeout=1), r2.get(timeout=1)) == (1, 1)


def test_naive_eta_is_rejected(app: App) -> None:
    @app.task(name="t")
    def t() -> None: ...

    with pytest.raises(ConfigurationError, match="timezone-aware"):
        t.apply_async(eta=datetime.datetime.now())


def test_expired_task_is_revoked_not_run(app: App) -> None:
    ran: list[int] = []

    @app.task(name="t")
    def t() -> None:
        ran.append(1)

    r = t.apply_async(expires=-1)  # a second ago
    drain(app)
    assert ran == []
    assert r.state is State.REVOKED


def test_priority_queue_and_key_options_reach_the_message(app: App) -> None:
    @app.task(name="mail", queue="mail", priority=3)
    def mail() -> None: ...

    r = mail.apply_async(priority=9, key="k1")
    again = mail.apply_async(key="k1")
    assert again.id == r.id
    [delivery] = app.broker.reserve(["mail"], 5, owner="t", lease=5)
    message = decode(delivery.body)
    assert (message.queue, message.priority, message.key, delivery.priority) == ("mail", 9, "k1", 9)
    with pytest.raises(ConfigurationError, match="priority"):
        mail.apply_async(priority=10)


def test_get_times_out(app: App) -> None:
    @app.task(name="t")
    def t() -> None: ...

    with pytest.raises(ResultTimeout):
        t.delay().get(timeout=0.1)


def test_progress_is_visible_while_running(app: App) -> None:
    seen: list[float | None] = []

    @app.task(name="p")
    def p() -> None:
        current_context().progress(0.4, note="halfway-ish")
        seen.append(app.result(current_context().id).progress)

    p.delay()
    drain(app)
    assert seen == [0.4]


def test_unknown_task_and_undecodable_message_go_to_dead_letters(app: App) -> None:
    from conveyor.brokers import Envelope

    app.broker.enqueue(
        [Envelope("bad1", "default", b"not json"), Envelope("bad2", "default", b'{"id":"x","task":"nope"}')]
    )
    outcomes = drain(app)
    assert [o.state for o in outcomes] == ["DEAD", "DEAD"]
    reasons = {d.id: d.reason for d in app.broker.dead_letters()}
    assert "undecodable" in reasons["bad1"]
    assert "'nope' is not registered" in reasons["bad2"]


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
