"""RetryPolicy: pure backoff arithmetic."""

from __future__ import annotations

import random

from conveyor.errors import Retry
from conveyor.retries import RetryPolicy


def test_exponential_delay_without_jitter_is_capped() -> None:
    policy = RetryPolicy(max_retries=10, backoff=1.0, backoff_max=10.0, jitter=False)
    assert [policy.delay(a) for a in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_full_jitter_stays_between_zero_and_the_ceiling() -> None:
    policy = RetryPolicy(max_retries=10, backoff=2.0, backoff_max=100.0)
    rng = random.Random(7)
    draws = [policy.delay(3, rng=rng) for _ in range(200)]
    assert all(0.0 <= d <= 16.0 for d in draws)
    assert max(draws) > 8.0 and min(draws) < 8.0  # spread, not constant


def test_retry_countdown_wins_and_retry_on_filters() -> None:
    policy = RetryPolicy(max_retries=2, retry_on=(TimeoutError,))
    assert policy.delay(0, Retry(countdown=3)) == 3
    assert policy.should_retry(TimeoutError(), 0)
    assert policy.should_retry(Retry(), 1)
    assert not policy.should_retry(ValueError(), 0)
    assert not policy.should_retry(TimeoutError(), 2)
