"""Result backends by URL scheme; optional engines are imported only when their URL is used."""

from __future__ import annotations

from urllib.parse import urlsplit

from conveyor._registry import Registry, check_scheme, load_class
from conveyor.backends.base import ResultBackend, Store
from conveyor.errors import ConfigurationError

__all__ = ["ResultBackend", "Store", "check_url", "from_url"]

#: scheme -> (module, class, extra that provides its client library or None)
_BACKENDS: Registry = {
    "memory": ("conveyor.backends.memory", "MemoryResultBackend", None),
    "sqlite": ("conveyor.backends.sqlite", "SQLiteResultBackend", None),
    "redis": ("conveyor.backends.redis", "RedisResultBackend", "redis"),
    "rediss": ("conveyor.backends.redis", "RedisResultBackend", "redis"),
    "unix": ("conveyor.backends.redis", "RedisResultBackend", "redis"),
    "redis+sentinel": ("conveyor.backends.redis", "RedisResultBackend", "redis"),
    "redis+cluster": ("conveyor.backends.redis", "RedisResultBackend", "redis"),
    "postgresql": ("conveyor.backends.postgres", "PostgresResultBackend", "postgres"),
    "postgres": ("conveyor.backends.postgres", "PostgresResultBackend", "postgres"),
}
#: Broker schemes that are no result store: an app on them must name a backend.
_NOT_A_STORE = frozenset({"amqp", "amqps"})


def check_url(url: str) -> None:
    """Check, importing nothing, that a result backend serves ``url`` (the app does at once, not at first use).

    Raises:
        ConfigurationError: an unknown scheme, or a RabbitMQ URL (RabbitMQ keeps messages only).
    """
    if urlsplit(url).scheme in _NOT_A_STORE:
        raise ConfigurationError(
            "RabbitMQ is no result store: name a result backend with the amqp:// broker, e.g. "
            "App(..., broker='amqp://...', backend='redis://localhost:6379/0') or backend='sqlite:///results.db' "
            "(or CONVEYOR_BACKEND_URL)"
        )
    check_scheme(_BACKENDS, url, "result backend")


def from_url(url: str) -> ResultBackend:
    """Build the result backend for ``url``.

    Raises:
        ConfigurationError: an unknown scheme, a RabbitMQ URL (name a ``backend=``), or the client
            library is missing.
    """
    check_url(url)
    cls = load_class(_BACKENDS, url, "result backend")
    assert issubclass(cls, ResultBackend), cls  # the registry names backend classes only
    return cls.from_url(url)
