"""The Redis engine: the broker for workers on many machines, and the key layout its result backend shares.

- ``broker.py``: :class:`RedisBroker`, thin Python over the Lua scripts.
- ``connection.py``: the redis-py clients, the retry loop and script loading; the result backend
  (``conveyor.backends.redis``) shares it.
- ``keys.py``: every key the broker and the result backend write, named in one place.
- ``enqueue.py``: storing messages (enqueue.lua), refused task ids and the queue registry.
- ``claims.py``: the index of idempotency keys (``enqueue(key=...)``).
- ``scripts/*.lua``: one atomic step each; every script opens with its KEYS, ARGV and the keys it touches.
"""

from conveyor.brokers.redis.broker import RedisBroker

__all__ = ["RedisBroker"]
