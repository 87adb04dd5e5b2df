"""The completion counter the synchronous task modules increment (one Redis client per process)."""

from __future__ import annotations

import os

import redis

from bench.systems import COUNTER_KEY, REDIS_URL_ENV

#: Connections the counter's pool may open. redis-py 8 caps a pool at 100 by default and raises
#: MaxConnectionsError past it; io-threads runs 128 threads per process (1000 on conveyor's
#: thread-pool fallback for io-async), each holding a connection while it counts.
MAX_CONNECTIONS = 2048

_client: redis.Redis | None = None
_pid = 0


def client() -> redis.Redis:
    """A client of the benchmark's Redis database, opened once per process (safe after fork)."""
    global _client, _pid
    if _client is None or _pid != os.getpid():
        _client = redis.Redis.from_url(os.environ[REDIS_URL_ENV], max_connections=MAX_CONNECTIONS)
        _pid = os.getpid()
    return _client


def incr() -> None:
    """Count one completed task."""
    client().incr(COUNTER_KEY)
