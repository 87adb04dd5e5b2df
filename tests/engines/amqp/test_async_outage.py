"""RabbitMQ behind the async producer: a broker that does not answer is a clear BrokerUnavailable.

The AMQP client blocks, so ``adelay`` runs it in a thread: the event loop keeps running meanwhile.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from conveyor import App, BrokerUnavailable
from conveyor.brokers.amqp.broker import AMQPBroker
from tests.engines.loopticks import loop_ticks
from tests.servers import free_port


def test_adelay_to_a_rabbitmq_that_is_down_raises_broker_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(AMQPBroker, "retry_for", 0.5)
    # Given an app whose RabbitMQ listens nowhere
    app = App(
        "down", broker=f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F", backend=f"sqlite:///{tmp_path / 'r.db'}"
    )

    @app.task
    def ping(n: int) -> int:
        return n

    async def scenario() -> int:
        # Then adelay fails with BrokerUnavailable, and the loop ran on while the client retried
        async with loop_ticks() as ticks:
            with pytest.raises(BrokerUnavailable):
                await ping.adelay(1)
        return ticks.count

    try:
        assert asyncio.run(scenario()) >= 10
    finally:
        app.close()
