"""The RabbitMQ engine: the broker contract over AMQP 0-9-1 (pika), for teams that already run RabbitMQ.

- ``broker.py``: :class:`AMQPBroker`, the message life cycle (docs/amqp.md tells the whole story).
- ``connection.py``: the connection, its lock, retries and fork handling.
- ``names.py``: the RabbitMQ layout: queue names, their arguments, headers, delay levels (pure).
- ``scan.py``: walking a queue in one transaction; a message copy's :class:`~conveyor.brokers.amqp.scan.Meta`.
- ``admin.py``: what walks queues (dead letters, cancel, purge, counts) and the registry of queues and workers.
- ``claims.py``: idempotency keys and explicit task ids, claimed in the store.
- ``redelivery.py``: what counts as a delivery, and when a held lease expires.
- ``inflight.py``: the in-flight counts ``stats()`` adds up, kept in the store.
"""

from conveyor.brokers.amqp.broker import AMQPBroker

__all__ = ["AMQPBroker"]
