"""RetryPolicy: when a failed attempt runs again, and after how long (pure, no I/O).

Backoff is exponential with full jitter (a random delay between 0 and ``min(cap, base * 2**attempt)``),
so a burst of failures does not retry in lockstep. See the AWS architecture blog post
"Exponential Backoff And Jitter" for why full jitter spreads load best.
"""

from __future__ import annotations

import dataclasses
import random

from conveyor.errors import Retry


@dataclasses.dataclass(frozen=True, slots=True)
class RetryPolicy:
    """A task's retry settings.

    Attributes:
        max_retries: retries after the first attempt; 0 never retries.
        backoff: base delay in seconds for the first retry.
        backoff_max: cap on any delay, in seconds.
        retry_on: exception types that are retried; others fail at once.
        jitter: draw the delay uniformly from [0, computed]; off gives the exact exponential delay.
    """

    max_retries: int = 0
    backoff: float = 1.0
    backoff_max: float = 600.0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    jitter: bool = True

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        """True if an attempt numbered ``attempt`` (0-based) that raised ``exc`` runs again.

        ``Retry`` raised by the task always asks for a retry, within ``max_retries``.
        """
        if attempt >= self.max_retries:
            return False
        return isinstance(exc, (Retry, *self.retry_on))

    def delay(self, attempt: int, exc: BaseException | None = None, rng: random.Random | None = None) -> float:
        """Seconds to wait before attempt ``attempt + 1``; a ``Retry(countdown=...)`` wins."""
        if isinstance(exc, Retry) and exc.countdown is not None:
            return max(0.0, exc.countdown)
        ceiling = min(self.backoff_max, self.backoff * (2.0**attempt))
        if not self.jitter:
            return ceiling
        draw = rng.uniform if rng is not None else random.uniform
        return draw(0.0, ceiling)
