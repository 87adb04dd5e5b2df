"""Enqueue inside your own PostgreSQL transaction: no task for an order that rolled back, no order without its task.

The same order placement four ways: a psycopg connection, a psycopg AsyncConnection (an async web
handler), a SQLAlchemy session and a Django ``transaction.atomic()`` block. docs/postgres.md shows these
functions; tests/e2e/test_postgres_transactions.py runs each of them under a real worker, committing one
order and rolling another back.

Run it: ``conveyor db migrate examples.postgres_orders:app``, then ``conveyor worker examples.postgres_orders:app``,
with ``DATABASE_URL`` (and ``CONVEYOR_BROKER_URL``) pointing at your database.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

import psycopg
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from conveyor import App, AsyncResult

DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@localhost/shop")

# The queue lives in the same database as the orders, in its own schema ("conveyor" by default).
app = App("shop", broker=DATABASE_URL)


class OutOfStock(Exception):
    """Raised after the task was enqueued: the whole transaction, task included, rolls back."""


@app.task
def ship(order_id: int) -> str:
    return f"order {order_id} shipped"


def create_orders_table(conn: psycopg.Connection[Any]) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS orders (id serial PRIMARY KEY, sku text NOT NULL, qty int NOT NULL)")


# --- psycopg ------------------------------------------------------------------------------------
def place_order(conn: psycopg.Connection[Any], sku: str, qty: int) -> AsyncResult[str]:
    with conn.transaction():
        row = conn.execute("INSERT INTO orders (sku, qty) VALUES (%s, %s) RETURNING id", (sku, qty)).fetchone()
        assert row is not None
        result = ship.apply_async((row[0],), connection=conn)  # written in this transaction
        if qty > 10:
            raise OutOfStock(sku)  # rolls back the order AND the task
    return result  # committed: a worker runs it now


# --- psycopg, async (a FastAPI handler, say) --------------------------------------------------------
async def place_order_async(conn: psycopg.AsyncConnection[Any], sku: str, qty: int) -> AsyncResult[str]:
    async with conn.transaction():
        cursor = await conn.execute("INSERT INTO orders (sku, qty) VALUES (%s, %s) RETURNING id", (sku, qty))
        row = await cursor.fetchone()
        assert row is not None
        result = await ship.aapply_async((row[0],), connection=conn)  # written in this transaction
        if qty > 10:
            raise OutOfStock(sku)  # rolls back the order AND the task
    return result


# --- SQLAlchemy (postgresql+psycopg) ------------------------------------------------------------
engine = create_engine(DATABASE_URL.replace("postgresql://", "postgresql+psycopg://", 1))


def place_order_sqlalchemy(sku: str, qty: int) -> AsyncResult[str]:
    with Session(engine) as session, session.begin():
        order_id = session.execute(
            text("INSERT INTO orders (sku, qty) VALUES (:sku, :qty) RETURNING id"), {"sku": sku, "qty": qty}
        ).scalar_one()
        result = ship.apply_async((order_id,), connection=session)  # the session's connection and transaction
        if qty > 10:
            raise OutOfStock(sku)
    return result


# --- Django (settings only here; in a project, settings.py has DATABASES) -----------------------
def setup_django() -> None:
    import django
    from django.conf import settings

    url = urlsplit(DATABASE_URL)
    settings.configure(
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.postgresql",  # psycopg 3 when installed
                "NAME": url.path.lstrip("/"),
                "USER": url.username or "",
                "PASSWORD": url.password or "",
                "HOST": url.hostname or "",
                "PORT": str(url.port or ""),
            }
        }
    )
    django.setup()


def place_order_django(sku: str, qty: int) -> AsyncResult[str]:
    from django.db import connection, transaction

    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO orders (sku, qty) VALUES (%s, %s) RETURNING id", [sku, qty])
            order_id = cursor.fetchone()[0]
        result = ship.apply_async((order_id,), connection=connection.connection)  # Django's psycopg connection
        if qty > 10:
            raise OutOfStock(sku)
    return result
