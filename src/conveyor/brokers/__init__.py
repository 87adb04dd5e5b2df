"""Brokers by URL scheme. Optional engines are imported only when their URL is used.

Each broker module exposes a class with a ``from_url(url, max_deliveries=...)`` classmethod.
"""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

from conveyor.brokers.base import Broker, DeadLetter, Delivery, Envelope, QueueStats, WorkerInfo
from conveyor.errors import ConfigurationError

__all__ = ["Broker", "DeadLetter", "Delivery", "Envelope", "QueueStats", "WorkerInfo", "from_url"]

#: scheme -> (module, class, extra that provides its client library or None)
_BROKERS: dict[str, tuple[str, str, str | None]] = {
    "memory": ("conveyor.brokers.memory", "MemoryBroker", None),
    "sqlite": ("conveyor.brokers.sqlite", "SQLiteBroker", None),
    "redis": ("conveyor.brokers.redis", "RedisBroker", "redis"),
    "rediss": ("conveyor.brokers.redis", "RedisBroker", "redis"),
    "unix": ("conveyor.brokers.redis", "RedisBroker", "redis"),
    "amqp": ("conveyor.brokers.amqp", "AMQPBroker", "amqp"),
    "amqps": ("conveyor.brokers.amqp", "AMQPBroker", "amqp"),
}


def load_class(registry: dict[str, tuple[str, str, str | None]], url: str, what: str) -> type:
    """Import the class serving ``url``'s scheme, naming the extra to install when it is missing.

    Raises:
        ConfigurationError: unknown scheme, or the client library is not installed.
    """
    scheme = urlsplit(url).scheme
    if scheme not in registry:
        raise ConfigurationError(f"no {what} for URL {url!r}; known schemes: {', '.join(sorted(registry))}")
    module_name, class_name, extra = registry[scheme]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if extra is None or (exc.name or "").startswith("conveyor"):
            raise
        raise ConfigurationError(
            f"{class_name} needs the {extra!r} extra: pip install 'conveyor[{extra}]' ({exc})"
        ) from exc
    cls: type = getattr(module, class_name)
    return cls


def from_url(url: str, *, max_deliveries: int = 5) -> Broker:
    """Build the broker for ``url`` (``memory://``, ``sqlite:///path``, ``redis://...``, ``amqp://...``)."""
    cls = load_class(_BROKERS, url, "broker")
    broker: Broker = cls.from_url(url, max_deliveries=max_deliveries)  # type: ignore[attr-defined]
    return broker
