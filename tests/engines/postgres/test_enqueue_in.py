"""``connection=`` takes what users hold: a psycopg connection, a SQLAlchemy Connection or Session; nothing else."""

from __future__ import annotations

import sqlite3
from pathlib import Path

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
