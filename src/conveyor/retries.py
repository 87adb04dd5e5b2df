"""Retries: when a failed attempt runs again, and after how long.

:class:`RetryPolicy` is the pure decision (no I/O); the :class:`Retries` middleware applies it
to a failed task, returning a :class:`~conveyor.middleware.Requeue` verdict (the executor then
records RETRY and sends the next attempt). It owns the ``retries``, ``backoff``, ``backoff_max``
and ``retry_on`` task options. ``raise Retry(...)`` (or ``ctx.retry()``) in a task always asks
for a retry, within ``retries``.

Backoff is exponential with full jitter (a random delay between 0 and ``min(cap, base * 2**attempt)``),
so a burst of failures does not retry in lockstep. See the AWS architecture blog post
"Exponential Backoff And Jitter" for why full jitter spreads load best.
"""

from __future__ import annotations

import dataclasses
import random
from typing import ClassVar

from conveyor.errors import Retry
from conveyor.middleware import Job, Middleware, Requeue
from conveyor.results import describe, type_name


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


class Retries(Middleware):
    """Asks for another attempt of a failed task while its policy allows one."""

    options: ClassVar[frozenset[str]] = frozenset({"retries", "backoff", "backoff_max", "retry_on"})

    def after_failure(self, job: Job, exc: Exception) -> Requeue | None:
        policy = job.task.retry_policy
        message = job.message
        # A message sent with its own max_retries keeps it (the task's option may have changed since).
        limit = message.max_retries if message.max_retries is not None else policy.max_retries
        if message.attempt >= limit or not policy.should_retry(exc, message.attempt):
            return None
        why = exc.reason if isinstance(exc, Retry) else f"{type_name(exc)}: {describe(exc)}"
        note = f"attempt {message.attempt + 1} of {job.task.options.retries}"
        return Requeue(policy.delay(message.attempt, exc), f"({note}): {why}")
