"""A worker's result batches skip the WAL flush only beside a PostgreSQL broker on the same server.

Counted on a PRIVATE cluster (nothing else writes there): ``pg_stat_wal.wal_sync`` is how many times
the server synced its write-ahead log. A result write that waits for the flush costs one sync; one that
does not is flushed later by the WAL writer, many commits at once.
"""

from __future__ import annotations

import psycopg
import pytest

from conveyor import App
from conveyor.backends.postgres import PostgresResultBackend
from conveyor.brokers.postgres import PostgresBroker
from conveyor.brokers.postgres.migrate import migrate
from conveyor.states import State
from tests.conftest import wait_until
from tests.pg_server import PrivatePostgres, private_postgres

WRITES = 30


def _syncs(server: PrivatePostgres) -> int:
    """WAL syncs of the cluster so far, once every other session has ended and reported its counts."""
    with psycopg.connect(server.url, autocommit=True) as conn:

        def alone() -> bool:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                "AND pid <> pg_backend_pid()"
            ).fetchone()
            return row is not None and row[0] == 0

        wait_until(alone, 10, "the other sessions to end")
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute("SELECT wal_sync FROM pg_stat_wal").fetchone()
    assert row is not None
    return int(row[0])


def _write_batches(backend: PostgresResultBackend) -> None:
    for i in range(WRITES):
        backend.set_many([(f"t{i}", State.SUCCESS, b"record")], ttl=60)
    backend.close()


@pytest.mark.timeout(90)
def test_result_batches_wait_for_the_flush_unless_the_broker_shares_the_server() -> None:
    with private_postgres({"wal_writer_delay": "10s"}) as server:
        migrate(server.url, "conveyor")
        # Given the backend alone (a producer's, or beside another broker): every batch waits for its flush
        alone = App("alone", broker="redis://127.0.0.1:1/0", backend=server.url).backend
        assert isinstance(alone, PostgresResultBackend) and alone.flush_results
        before = _syncs(server)
        _write_batches(alone)
        synced = _syncs(server) - before
        assert synced >= WRITES

        # When the app's broker is PostgreSQL on the same server (a worker's app)
        app = App("worker", broker=server.url)
        assert app.broker is not None
        backend = app.backend
        assert isinstance(backend, PostgresResultBackend) and not backend.flush_results
        before = _syncs(server)
        _write_batches(backend)
        app.close()
        # Then its batches are flushed by the WAL writer, many at once, and every record landed
        assert _syncs(server) - before < WRITES // 3
        reader = PostgresResultBackend(server.url)
        try:
            assert reader.get_many([f"t{i}" for i in range(WRITES)]) == [b"record"] * WRITES
        finally:
            reader.close()


def test_a_broker_on_another_server_leaves_the_flush_on(postgres_db: str) -> None:
    # Given a backend on the test server and a PostgreSQL broker URL naming another port
    backend = PostgresResultBackend(postgres_db)
    try:
        # When the broker is built with it as its store
        PostgresBroker("postgresql://postgres@127.0.0.1:1/other", store=backend)
        # Then the backend keeps waiting for the flush: the acks would go to another write-ahead log
        assert backend.flush_results
    finally:
        backend.close()
