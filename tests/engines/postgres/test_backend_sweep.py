"""The PostgreSQL backend's sweep deletes what expired of every table (results, gathers with their slots,
buckets), and each event append trims the log."""

from __future__ import annotations

import time

import pytest

from conveyor.backends import postgres as postgres_backend
from conveyor.backends.postgres import PostgresResultBackend
from conveyor.states import State
from tests.conftest import postgres_schema_url


def test_the_sweep_deletes_expired_results_gathers_slots_and_buckets(postgres_db: str) -> None:
    backend = PostgresResultBackend(postgres_schema_url(postgres_db))
    try:
        # Given a result, a gather of two slots and a bucket that all expire within 0.1 s, and a live gather
        backend.set("old", State.SUCCESS, b"record", ttl=0.1)
        backend.gather("chord-old", 0, b"a", ttl=0.1)
        backend.gather("chord-old", 1, b"b", ttl=0.1)
        backend.take_token("bucket", rate=100.0, burst=1.0)  # full again (its row expired) after 0.01 s
        backend.gather("chord-live", 0, b"c", ttl=60)
        time.sleep(0.2)
        # When the next write sweeps (at most once a minute per process; made due here)
        backend._next_sweep = 0.0
        backend.set("new", State.STARTED, b"record", ttl=60)
        # Then only live rows are left: no expired row of any table, no orphaned slot
        schema = backend.db.schema
        with backend.db.connection() as conn:
            left = {
                table: [row[0] for row in conn.execute(f"SELECT {key} FROM {schema}.{table} ORDER BY 1").fetchall()]
                for table, key in (("results", "id"), ("gathers", "key"), ("gather_slots", "key"), ("buckets", "name"))
            }
        assert left == {"results": ["new"], "gathers": ["chord-live"], "gather_slots": ["chord-live"], "buckets": []}
    finally:
        backend.close()


def test_an_event_append_trims_the_log_to_its_newest_batches(postgres_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a log bounded to 5 batches (MAX_BATCHES, made small), appended to 12 times
    monkeypatch.setattr(postgres_backend, "MAX_BATCHES", 5)
    backend = PostgresResultBackend(postgres_schema_url(postgres_db))
    try:
        for i in range(12):
            backend.append_events(f"b{i}".encode(), ttl=3600)
        # Then the one statement of each append kept the newest five, in order
        assert [batch for _, batch in backend.read_events(None, 100)] == [f"b{i}".encode() for i in range(7, 12)]
    finally:
        backend.close()
