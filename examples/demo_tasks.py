"""The demo's tasks: small, real pieces of work a web app would push out of its request path.

Run a worker for them with ``conveyor worker examples.demo_tasks:app``. The broker is the embedded
SQLite default (a ``conveyor.db`` file); ``CONVEYOR_BROKER_URL`` points it elsewhere.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random

from conveyor import App, current_context

app = App("demo")


@app.task
def checksum(text: str) -> str:
    """SHA-256 of a text, e.g. to fingerprint an upload."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@app.task(priority=5)
def count_primes(below: int) -> int:
    """Count primes below a bound: a little CPU work."""
    sieve = bytearray([1]) * below
    sieve[:2] = b"\x00\x00"
    for i in range(2, math.isqrt(below) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytearray(len(sieve[i * i :: i]))
    return sum(sieve)


@app.task
async def fetch_price(sku: str) -> float:
    """An async task: waits on (simulated) I/O on the worker's event loop."""
    await asyncio.sleep(0.001)
    return round(10 + (int(hashlib.md5(sku.encode()).hexdigest(), 16) % 9000) / 100, 2)


@app.task(retries=3, backoff=0.05, retry_on=(ConnectionError,))
def charge_card(order_id: int) -> str:
    """Fails on its first attempt for some orders (a flaky payment API), then succeeds on retry."""
    if current_context().attempt == 0 and random.Random(order_id).random() < 0.2:
        raise ConnectionError(f"payment gateway timed out for order {order_id}")
    return f"order-{order_id}-charged"


@app.task
def reject_coupon(code: str) -> None:
    """Always fails: shows how a failure is recorded with its traceback."""
    raise ValueError(f"coupon {code!r} has expired")
