"""The completion counter the synchronous task modules increment (one Redis client per process)."""

from __future__ import annotations

import os

import redis

from bench.systems import COUNTER_KEY, REDIS_URL_ENV

_client: redis.Redis | None = None
_pid = 0


def client() -> redis.Redis:
    """A client of the benchmark's Redis database, opened once per process (safe after fork)."""
    global _client, _pid
    if _client is None or _pid != os.getpid():
        _client = redis.Redis.from_url(os.environ[REDIS_URL_ENV])
        _pid = os.getpid()
    return _client


def incr() -> None:
    """Count one completed task."""
    client().incr(COUNTER_KEY)
