"""Result backends by URL scheme; optional engines are imported only when their URL is used."""

from __future__ import annotations

from conveyor._registry import Registry, load_class
from conveyor.backends.base import ResultBackend

__all__ = ["ResultBackend", "from_url"]

_BACKENDS: Registry = {
    "memory": ("conveyor.backends.memory", "MemoryResultBackend", None),
    "sqlite": ("conveyor.backends.sqlite", "SQLiteResultBackend", None),
    "redis": ("conveyor.backends.redis", "RedisResultBackend", "redis"),
    "rediss": ("conveyor.backends.redis", "RedisResultBackend", "redis"),
    "unix": ("conveyor.backends.redis", "RedisResultBackend", "redis"),
}


def from_url(url: str) -> ResultBackend:
    """Build the result backend for ``url``.

    Raises:
        ConfigurationError: unknown scheme (RabbitMQ is no result store: name a ``backend=``),
            or the client library is missing.
    """
    backend: ResultBackend = load_class(_BACKENDS, url, "result backend").from_url(url)  # type: ignore[attr-defined]
    return backend
