"""The shop a Celery user built on day one (issue 14), for the tests that redo what they did.

``CONVEYOR_BROKER_URL`` (and ``CONVEYOR_BACKEND_URL``) pick the broker when the module is imported:
the tests set them, then (re)import this module, as a user's producer imports its tasks module.
"""

from __future__ import annotations

import time

from conveyor import App, current_context

app = App("newcomer")


class CardDeclined(Exception):
    """A user's own exception, built from its message like most exceptions."""


class GatewayError(Exception):
    """A user's own exception whose constructor wants more than a message: it cannot be rebuilt."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"gateway answered {status}: {body}")
        self.status = status


@app.task
def charge(order_id: int, amount: int, currency: str = "EUR") -> str:
    """Charge an order: fails the way a user's code does, by the amount asked."""
    if amount < 0:
        raise ValueError(f"negative amount {amount} for order {order_id}")
    if amount == 0:
        raise CardDeclined(f"card declined for order {order_id}")
    if amount > 10_000:
        raise GatewayError(502, "bad gateway")
    return f"charged {amount} {currency} for order {order_id}"


@app.task
def price(sku: str) -> float:
    """Look a price up: an unknown sku raises KeyError, as a dict lookup does."""
    return {"apple": 1.5}[sku]


@app.task
def needs_retry() -> str:
    """Ask for a retry on the first attempt, without declaring retries= (the default is 0)."""
    if current_context().attempt == 0:
        current_context().retry(countdown=0.1)
    return "retried"


@app.task
def resize(image: str, seconds: float = 0.0) -> str:
    """Report progress half-way, take ``seconds`` for the other half, then finish."""
    current_context().progress(0.5, note="half done")
    time.sleep(seconds)
    return f"resized {image}"


@app.periodic(every=2)
@app.task
def tick() -> None:
    """The shop's 2-second periodic task (no test here runs a beat on it for long)."""
