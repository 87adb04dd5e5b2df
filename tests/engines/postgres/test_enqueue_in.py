"""``connection=`` takes what users hold: a psycopg connection (an AsyncConnection for ``aapply_async``), a
SQLAlchemy Connection or Session; nothing else."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from conveyor import App
from conveyor.errors import ConfigurationError, DuplicateTaskId
from tests.conftest import postgres_schema_url


@pytest.fixture
def app(postgres_db: str) -> App:
    the_app = App("t", broker=postgres_schema_url(postgres_db))
    return the_app


def _queued(app: App) -> int:
    return sum(s.ready for s in app.broker.stats())


def test_sqlalchemy_connection_and_session_commit_or_roll_back_the_task(app: App, postgres_db: str) -> None:
    @app.task
    def ship(order_id: int) -> None: ...

    engine = create_engine(postgres_db.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        # A Connection: rolled back, then committed
        with engine.connect() as conn:
            with conn.begin() as tx:
                ship.apply_async((1,), connection=conn)
                tx.rollback()
            assert _queued(app) == 0
            with conn.begin():
                ship.apply_async((2,), connection=conn)
            assert _queued(app) == 1
        # A Session: committed by session.begin()
        with Session(engine) as session, session.begin():
            ship.apply_async((3,), connection=session)
            assert _queued(app) == 1  # not visible to others before the commit
        assert _queued(app) == 2
        # A held explicit id fails the caller's statement, like any other
        with engine.connect() as conn, conn.begin(), pytest.raises(DuplicateTaskId):
            for _ in range(2):
                ship.apply_async((4,), connection=conn, task_id="same")
    finally:
        engine.dispose()
        app.close()


def test_anything_else_is_a_configuration_error(app: App, tmp_path: Path) -> None:
    @app.task
    def ship(order_id: int) -> None: ...

    with sqlite3.connect(tmp_path / "x.db") as other, pytest.raises(ConfigurationError, match="psycopg 3 connection"):
        ship.apply_async((1,), connection=other)
    app.close()


def test_aapply_async_takes_an_async_connection_in_its_transaction(app: App, postgres_db: str) -> None:
    @app.task
    def ship(order_id: int) -> None: ...

    async def scenario() -> None:
        async with await psycopg.AsyncConnection.connect(postgres_db, autocommit=True) as aconn:
            # Rolled back: no task; committed: one
            async with aconn.transaction(force_rollback=True):
                await ship.aapply_async((1,), connection=aconn)
            assert _queued(app) == 0
            async with aconn.transaction():
                await ship.aapply_async((2,), connection=aconn)
                assert _queued(app) == 0  # not visible to others before the commit
            assert _queued(app) == 1
            # A held explicit id fails the caller's statement, as with a sync connection
            with pytest.raises(DuplicateTaskId):
                async with aconn.transaction():
                    for _ in range(2):
                        await ship.aapply_async((3,), connection=aconn, task_id="same")
        # A sync connection is refused by the async call, naming the one to use
        with psycopg.connect(postgres_db) as conn, pytest.raises(ConfigurationError, match="AsyncConnection"):
            await ship.aapply_async((4,), connection=conn)

    try:
        asyncio.run(scenario())
    finally:
        app.close()
