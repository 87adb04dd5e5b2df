"""``Broker.ping`` and ``ResultBackend.ping``: the worker's start-up check (worker/startup.py), over every kind.

A live server answers at once; a dead one is covered end to end by tests/e2e/test_newcomer_startup.py.
"""

from __future__ import annotations

import time

from conveyor.backends import ResultBackend
from conveyor.brokers import Broker


def test_a_live_broker_answers_a_ping_at_once(broker: Broker) -> None:
    began = time.monotonic()
    broker.ping()
    broker.ping()
    assert time.monotonic() - began < 5


def test_a_live_backend_answers_a_ping_and_keeps_no_record(backend: ResultBackend) -> None:
    backend.ping()
    assert backend.get("conveyor-ping") is None
