"""Transactional enqueue on PostgreSQL, with a real worker: examples/postgres_orders.py (shown in docs/postgres.md)
enqueues inside the caller's transaction with psycopg (sync and async), SQLAlchemy and Django; a commit runs the task, a
rollback leaves no task."""

from __future__ import annotations

import asyncio
import importlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest

from conveyor import State
from tests.conftest import postgres_schema_url
from tests.e2e.conftest import ROOT, wait_until


@pytest.fixture
def shop(postgres_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ModuleType, str]]:
    """The example imported fresh on this run's database and a schema of its own; a worker serving it."""
    broker_url = postgres_schema_url(postgres_db)
    for key in [k for k in os.environ if k.startswith("CONVEYOR_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("DATABASE_URL", postgres_db)
    monkeypatch.setenv("CONVEYOR_BROKER_URL", broker_url)
    sys.modules.pop("examples.postgres_orders", None)
    example = importlib.import_module("examples.postgres_orders")
    log = tmp_path / "worker.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with log.open("w") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "conveyor", "worker", "examples.postgres_orders:app", "-c", "2"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: "ready" in log.read_text(), 20, f"the worker to start:\n{log.read_text()}")
        yield example, broker_url.rpartition("schema=")[2]
    finally:
        worker.terminate()
        worker.wait(timeout=20)
        example.app.close()
        example.engine.dispose()
        sys.modules.pop("examples.postgres_orders", None)


def test_commit_runs_the_task_and_rollback_leaves_none_with_psycopg_sqlalchemy_and_django(
    shop: tuple[ModuleType, str], postgres_db: str
) -> None:
    example, schema = shop

    def place_async(sku: str, qty: int) -> Any:
        async def run() -> Any:
            async with await psycopg.AsyncConnection.connect(postgres_db, autocommit=True) as aconn:
                return await example.place_order_async(aconn, sku, qty)

        return asyncio.run(run())

    with psycopg.connect(postgres_db, autocommit=True) as conn:
        example.create_orders_table(conn)
        # Given a task enqueued in an open transaction: no worker sees it before the commit
        with conn.transaction():
            early = example.ship.apply_async((0,), connection=conn)
            time.sleep(1.0)  # bounded: a worker that could see the task would have run it by now
            assert early.state is State.PENDING
        assert early.get(timeout=15) == "order 0 shipped"
        # When an order fails after its task was enqueued (psycopg, SQLAlchemy, Django): all rolls back
        example.setup_django()
        for place in (
            lambda sku, qty: example.place_order(conn, sku, qty),
            place_async,  # await ship.aapply_async(..., connection=aconn)
            example.place_order_sqlalchemy,
            example.place_order_django,
        ):
            with pytest.raises(example.OutOfStock):
                place("lamp", 99)
            # and one that commits runs
            shipped = place("mug", 1)
            assert shipped.get(timeout=15).startswith("order ")
        # Then the rolled-back orders left neither a row nor a task; each committed one ran once
        orders = conn.execute("SELECT sku FROM orders ORDER BY id").fetchall()
        assert orders == [("mug",)] * 4
        wait_until(lambda: _queued(conn, schema) == 0, 10, "the queue to empty")
        results = conn.execute(f"SELECT count(*) FROM {schema}.results").fetchone()
        assert results == (5,)  # order 0 and the four mugs: no task ran for a lamp


def _queued(conn: psycopg.Connection[tuple[object, ...]], schema: str) -> int:
    row = conn.execute(f"SELECT count(*) FROM {schema}.messages").fetchone()
    assert row is not None
    return int(str(row[0]))


def test_connection_needs_the_postgres_broker(tmp_path: Path) -> None:
    from conveyor import App
    from conveyor.errors import ConfigurationError

    app = App("t", broker=f"sqlite:///{tmp_path / 'q.db'}")

    @app.task
    def noop() -> None: ...

    with pytest.raises(ConfigurationError, match="needs the PostgreSQL broker"):
        noop.apply_async((), connection=object())
    with pytest.raises(ConfigurationError, match="needs the PostgreSQL broker"):
        asyncio.run(noop.aapply_async((), connection=object()))
    app.close()
