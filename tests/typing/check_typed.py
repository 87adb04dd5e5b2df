"""Checked by mypy --strict, never run: typed results, and Django's delay_on_commit typed like delay().

Every ``# type: ignore[...]`` here marks a line that MUST be a type error (``warn_unused_ignores``).
"""

from __future__ import annotations

import datetime
from typing import assert_type

from conveyor import App, AsyncResult
from conveyor.contrib.django import apply_async_on_commit, delay_on_commit

app = App("typing")


@app.task
def ship(when: datetime.date, days: int) -> datetime.date:
    return when + datetime.timedelta(days=days)


@app.task
async def later(when: datetime.datetime) -> datetime.datetime:
    return when


def check() -> None:
    assert_type(ship.delay(datetime.date.today(), 2).get(), datetime.date)
    assert_type(later.delay(datetime.datetime.now(datetime.UTC)).get(), datetime.datetime)
    assert_type(delay_on_commit(ship, datetime.date.today(), 2), AsyncResult[datetime.date])
    assert_type(apply_async_on_commit(ship, (datetime.date.today(), 2), countdown=5), AsyncResult[datetime.date])
    delay_on_commit(ship, "2024-01-01", 2)  # type: ignore[arg-type]
    delay_on_commit(ship, datetime.date.today())  # type: ignore[call-arg]
    apply_async_on_commit(ship, (), countdwn=5)  # type: ignore[call-arg]
