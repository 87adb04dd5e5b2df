"""The shop's tasks, on the app it runs in production (the tests move it onto a test broker)."""

from __future__ import annotations

import datetime

from conveyor import App, current_context

app = App("shop")  # sqlite:///conveyor.db here; the test fixtures never touch it


@app.task
def send_receipt(order_id: int) -> str:
    return f"receipt for {order_id} sent"


@app.task
def ship_by(ordered: datetime.date, days: int) -> datetime.date:
    """Typed arguments and result: a date goes in and comes out."""
    return ordered + datetime.timedelta(days=days)


@app.task(retries=2, backoff=30.0)
def flaky_charge(order_id: int) -> str:
    """Fails its first attempt, as a payment API that times out once."""
    if current_context().attempt == 0:
        raise TimeoutError("payment API timed out")
    return f"charged {order_id}"


@app.task
def refund(order_id: int) -> None:
    raise ValueError(f"order {order_id} was never charged")


@app.task
def checkout(order_id: int) -> str:
    """Sends another task, as a web view would."""
    send_receipt.delay(order_id)
    return "ok"
