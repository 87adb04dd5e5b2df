"""Flow control options and their effect in the executor (memory broker, drain): rate limits, per-key slots."""

from __future__ import annotations

import time

import pytest

from conveyor import App, ConfigurationError, current_context
from conveyor.flowcontrol import parse_rate
from conveyor.testing import drain
from conveyor.worker.events import Ended


def count_tokens(app: App) -> list[str]:
    """The buckets of every ``take_token`` call the app's backend gets from now on, in order."""
    taken: list[str] = []
    take = app.backend.take_token

    def counting(bucket: str, rate: float, burst: float) -> float:
        taken.append(bucket)
        return take(bucket, rate, burst)

    app.backend.take_token = counting  # type: ignore[method-assign]
    return taken


@pytest.mark.parametrize(
    ("text", "rate"), [("10/s", 10.0), ("120/m", 2.0), ("36/h", 0.01), (5, 5.0), ("2.5/s", 2.5), ("7", 7.0)]
)
def test_rates_parse(text: str | int, rate: float) -> None:
    assert parse_rate(text) == pytest.approx(rate)


@pytest.mark.parametrize("text", ["10 per s", "10/d", "0/s", "-1", "", True])
def test_bad_rates_fail_at_decoration(text: object) -> None:
    app = App("fc", broker="memory://")
    with pytest.raises(ConfigurationError, match="rate_limit"):
        app.task(rate_limit=text)(lambda: None)  # type: ignore[call-overload]


def test_concurrency_options_go_together() -> None:
    app = App("fc", broker="memory://")
    with pytest.raises(ConfigurationError, match="concurrency_key"):
        app.task(max_concurrency=2)(lambda: None)
    with pytest.raises(ConfigurationError, match="max_concurrency"):
        app.task(concurrency_key=lambda: "k")(lambda: None)
    with pytest.raises(ConfigurationError, match="max_concurrency"):
        app.task(concurrency_key=lambda: "k", max_concurrency=0)(lambda: None)


def test_a_rate_limited_task_is_deferred_in_the_broker_with_its_token_not_run_early() -> None:
    app = App("fc", broker="memory://")

    @app.task(rate_limit="10/s")
    def paced(i: int) -> int:
        return i

    taken = count_tokens(app)
    # Given 4 runs of a task limited to 10 a second (a burst of 1)
    results = [paced.delay(i) for i in range(4)]
    started = time.monotonic()
    outcomes = drain(app, timeout=10)
    # Then the first ran at once and the others were given back (uncounted) and ran a tenth of a second apart
    assert sorted(r.get(timeout=1) for r in results) == [0, 1, 2, 3]
    assert [o.ended for o in outcomes].count(Ended.SUCCESS) == 4
    assert [o.ended for o in outcomes].count(Ended.RETURNED) >= 3
    assert time.monotonic() - started >= 0.28
    # And a deferred run carries its reserved token (a header): each run took one token, not one per return
    assert len(taken) == 4


def test_a_key_with_no_free_slot_is_given_back_and_the_slot_is_released_after_the_run() -> None:
    app = App("fc", broker="memory://")

    @app.task(concurrency_key=lambda user: user, max_concurrency=1)
    def per_user(user: str) -> str:
        # While this runs, its key's one slot is held by it
        assert not app.backend.acquire_lease(f"concurrency:{per_user.name}:{user}:0", "someone-else", 5)
        return user

    results = [per_user.delay(u) for u in "aab"]
    drain(app, timeout=10)
    assert [r.get(timeout=1) for r in results] == ["a", "a", "b"]
    # And once they ended, every slot is free again
    for user in "ab":
        assert app.backend.acquire_lease(f"concurrency:{per_user.name}:{user}:0", "someone-else", 5)


def test_a_retry_of_a_rate_limited_task_takes_a_token_of_its_own() -> None:
    app = App("fc", broker="memory://")
    taken = count_tokens(app)

    @app.task(rate_limit="20/s", retries=1, backoff=0.01)
    def flaky(i: int) -> int:
        if current_context().attempt == 0:
            raise TimeoutError("try again")
        return i

    # Given two runs that each fail once, the second deferred for a token before its first attempt
    results = [flaky.delay(i) for i in range(2)]
    drain(app, timeout=10)
    # Then each attempt took one token: 2 runs x 2 attempts
    assert [r.get(timeout=1) for r in results] == [0, 1]
    assert len(taken) == 4
