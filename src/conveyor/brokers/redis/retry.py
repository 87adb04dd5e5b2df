"""The bounded retry both Redis clients (threads and coroutines) share: its pauses and its final error."""

from __future__ import annotations

from conveyor.errors import BrokerUnavailable

#: First pause after a second failure, and the longest pause, in seconds (the first retry is at once).
FIRST_PAUSE, MAX_PAUSE = 0.05, 1.0


def next_pause(pause: float) -> float:
    """The pause after ``pause``: 0, 0.05, 0.1, 0.2, ... up to 1 s."""
    return min(max(pause * 2, FIRST_PAUSE), MAX_PAUSE)


def unavailable(printable: str, retry_for: float, exc: BaseException) -> BrokerUnavailable:
    """The error raised once ``retry_for`` seconds of retries did not get an answer."""
    return BrokerUnavailable(f"Redis at {printable} did not answer within {retry_for:g} s: {exc}")


def unconfirmed(printable: str, replicas: int, acked: int, timeout: float) -> BrokerUnavailable:
    """The error raised when ``WAIT`` saw fewer replicas confirm an enqueue than the URL's ``wait=`` asks."""
    return BrokerUnavailable(
        f"Redis at {printable}: the enqueue reached {acked} of {replicas} replica(s) within {timeout:g} s "
        "(it is stored on the master; a failover before it replicates would lose it)"
    )
