"""The SQLite engine: the embedded default broker, for many processes on one machine.

- ``broker.py``: :class:`SQLiteBroker`, the broker contract in one transaction per operation.
- ``connection.py``: one WAL connection per process and thread, opened lazily; the result backend
  (``conveyor.backends.sqlite``) shares it.
- ``schema.sql``: the tables and indexes, each commented with the query it serves.
"""

from conveyor.brokers.sqlite.broker import SQLiteBroker

__all__ = ["SQLiteBroker"]
