"""Checked by mypy --strict, never run: brokers and backends are built in one step, keeping their types.

Every ``# type: ignore[...]`` here marks a line that MUST be a type error (``warn_unused_ignores``).
"""

from __future__ import annotations

from typing import assert_type

from conveyor.backends import Store
from conveyor.backends.memory import MemoryResultBackend
from conveyor.brokers import Broker, from_url
from conveyor.brokers.memory import MemoryBroker


def check() -> None:
    assert_type(MemoryBroker.from_url("memory://"), MemoryBroker)
    assert_type(MemoryResultBackend.from_url("memory://"), MemoryResultBackend)
    assert_type(from_url("memory://", max_deliveries=3, store=MemoryResultBackend()), Broker)
    # A broker's store is a result backend (RabbitMQ's reads task records there), not any Store
    store: Store = MemoryResultBackend()
    from_url("amqp://", store=store)  # type: ignore[arg-type]
    # The hidden second construction step is gone
    MemoryBroker().use_backend(lambda: MemoryResultBackend())  # type: ignore[attr-defined]
