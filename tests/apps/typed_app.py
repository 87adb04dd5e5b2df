"""Tasks with rich annotations, for the typed-arguments end-to-end test (issue 14, friction 5).

Each task reports what it received (types and values) as its result, so the test sees the worker's view.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import uuid

import msgspec

from conveyor import App

app = App("typed")


class Size(enum.Enum):
    SMALL = "s"
    LARGE = "l"


class Line(msgspec.Struct):
    sku: str
    qty: int


@dataclasses.dataclass
class Customer:
    id: uuid.UUID
    since: datetime.date


@dataclasses.dataclass
class Received:
    """What the task got: its arguments back, and the type name of each."""

    when: datetime.datetime
    price: decimal.Decimal
    ident: uuid.UUID
    blob: bytes
    pair: tuple[int, int]
    tags: set[str]
    by_id: dict[int, str]
    size: Size
    lines: list[Line]
    customer: Customer
    types: dict[str, str]


@app.task
def receive(
    when: datetime.datetime,
    price: decimal.Decimal,
    ident: uuid.UUID,
    blob: bytes,
    pair: tuple[int, int],
    tags: set[str],
    by_id: dict[int, str],
    size: Size,
    lines: list[Line],
    customer: Customer,
) -> Received:
    """Return every argument, and the type each arrived as."""
    args = (when, price, ident, blob, pair, tags, by_id, size, lines, customer)
    names = ("when", "price", "ident", "blob", "pair", "tags", "by_id", "size", "lines", "customer")
    types = {name: type(value).__name__ for name, value in zip(names, args, strict=True)}
    types["by_id.key"] = type(next(iter(by_id))).__name__
    types["lines[0]"] = type(lines[0]).__name__
    return Received(when, price, ident, blob, pair, tags, by_id, size, lines, customer, types)


@app.task
async def later(day: datetime.date, days: int) -> datetime.date:
    """An async task: typed argument in, typed result out."""
    return day + datetime.timedelta(days=days)


@app.task
def untyped(when, tags):  # type: ignore[no-untyped-def]
    """No annotations: arguments arrive as JSON gives them (as before)."""
    return [type(when).__name__, type(tags).__name__]
