"""Brokers by URL scheme. Optional engines are imported only when their URL is used.

Each broker module exposes a class with a ``from_url(url, max_deliveries=...)`` classmethod.
"""

from __future__ import annotations

from conveyor._registry import Registry, load_class
from conveyor.brokers.base import Broker, DeadLetter, Delivery, Envelope, QueueStats, WorkerInfo

__all__ = ["Broker", "DeadLetter", "Delivery", "Envelope", "QueueStats", "WorkerInfo", "from_url"]

#: scheme -> (module, class, extra that provides its client library or None)
_BROKERS: Registry = {
    "memory": ("conveyor.brokers.memory", "MemoryBroker", None),
    "sqlite": ("conveyor.brokers.sqlite", "SQLiteBroker", None),
    "redis": ("conveyor.brokers.redis", "RedisBroker", "redis"),
    "rediss": ("conveyor.brokers.redis", "RedisBroker", "redis"),
    "unix": ("conveyor.brokers.redis", "RedisBroker", "redis"),
    "amqp": ("conveyor.brokers.amqp", "AMQPBroker", "amqp"),
    "amqps": ("conveyor.brokers.amqp", "AMQPBroker", "amqp"),
}


def from_url(url: str, *, max_deliveries: int = 5) -> Broker:
    """Build the broker for ``url`` (``memory://``, ``sqlite:///path``, ``redis://...``, ``amqp://...``)."""
    cls = load_class(_BROKERS, url, "broker")
    broker: Broker = cls.from_url(url, max_deliveries=max_deliveries)  # type: ignore[attr-defined]
    return broker
