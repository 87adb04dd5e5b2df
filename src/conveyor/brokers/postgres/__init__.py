"""The PostgreSQL engine: a broker and result backend for teams that run PostgreSQL and nothing else.

- ``broker.py``: :class:`PostgresBroker`, the broker contract, one server-side function per operation.
- ``connection.py``: URLs, one psycopg_pool pool per process, errors; the result backend
  (``conveyor.backends.postgres``) shares it.
- ``listener.py``: the LISTEN connection that wakes idle workers and result waiters.
- ``migrate.py`` and ``migrations/``: the versioned schema, applied by ``conveyor db migrate APP``.
"""

from conveyor.brokers.postgres.broker import PostgresBroker

__all__ = ["PostgresBroker"]
