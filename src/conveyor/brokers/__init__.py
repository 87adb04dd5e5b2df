"""Brokers by URL scheme. Optional engines are imported only when their URL is used.

Each engine is a subpackage (``sqlite/``, ``redis/``, ``amqp/``) or module (``memory.py``) whose broker
class is built by :meth:`Broker.from_url <conveyor.brokers.base.Broker.from_url>`. A new engine is a new
subpackage of the same shape (``broker.py``, ``connection.py``, ``keys.py`` or ``schema.sql`` as it needs;
its result backend, if any, in ``conveyor/backends/``) and one line in ``_BROKERS`` below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from conveyor._registry import Registry, check_scheme, load_class
from conveyor.brokers.base import Broker, DeadLetter, Delivery, Envelope, QueueStats, WorkerInfo

if TYPE_CHECKING:
    from conveyor.backends.base import ResultBackend

__all__ = ["Broker", "DeadLetter", "Delivery", "Envelope", "QueueStats", "WorkerInfo", "check_url", "from_url"]

#: scheme -> (module, class, extra that provides its client library or None)
_BROKERS: Registry = {
    "memory": ("conveyor.brokers.memory", "MemoryBroker", None),
    "sqlite": ("conveyor.brokers.sqlite", "SQLiteBroker", None),
    "redis": ("conveyor.brokers.redis", "RedisBroker", "redis"),
    "rediss": ("conveyor.brokers.redis", "RedisBroker", "redis"),
    "unix": ("conveyor.brokers.redis", "RedisBroker", "redis"),
    "redis+sentinel": ("conveyor.brokers.redis", "RedisBroker", "redis"),
    "redis+cluster": ("conveyor.brokers.redis", "RedisBroker", "redis"),
    "amqp": ("conveyor.brokers.amqp", "AMQPBroker", "amqp"),
    "amqps": ("conveyor.brokers.amqp", "AMQPBroker", "amqp"),
    "postgresql": ("conveyor.brokers.postgres", "PostgresBroker", "postgres"),
    "postgres": ("conveyor.brokers.postgres", "PostgresBroker", "postgres"),
}


def check_url(url: str) -> None:
    """Check, importing nothing, that a broker serves ``url``'s scheme (the app does when it is built).

    Raises:
        ConfigurationError: an unknown scheme (``kafka://``).
    """
    check_scheme(_BROKERS, url, "broker")


def from_url(url: str, *, max_deliveries: int = 5, store: ResultBackend | None = None) -> Broker:
    """Build the broker for ``url`` (``memory://``, ``sqlite:///path``, ``redis://...``, ``amqp://...``,
    ``postgresql://...``).

    Args:
        url: the broker's URL; its scheme picks the engine.
        max_deliveries: deliveries after which an unacknowledged message is dead-lettered.
        store: the app's result backend, for a broker that keeps shared state in it (RabbitMQ).

    Raises:
        ConfigurationError: an unknown scheme, a missing client library, a URL the engine cannot use,
            or no ``store`` for a broker that needs one.
    """
    cls = load_class(_BROKERS, url, "broker")
    assert issubclass(cls, Broker), cls  # the registry names broker classes only
    return cls.from_url(url, max_deliveries=max_deliveries, store=store)
