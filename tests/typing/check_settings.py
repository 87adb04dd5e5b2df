"""Checked by mypy --strict, never run: ``App(**settings)`` is typed (issue 14, friction 11).

Every ``# type: ignore[...]`` here marks a line that MUST be a type error; with ``warn_unused_ignores``
the build fails if one of them stops being an error.
"""

from __future__ import annotations

import datetime
from typing import assert_type

from conveyor import App, AsyncResult

ok = App("typing", broker="memory://", lease=30, result_ttl=60.5, track_started=False, concurrency=None)

App("typing", lease="30")  # type: ignore[arg-type]  # a string where seconds go
App("typing", track_started="no")  # type: ignore[arg-type]  # a string is no bool
App("typing", concurrency="4")  # type: ignore[arg-type]
App("typing", leese=60)  # type: ignore[call-arg]  # a misspelt setting


@ok.task(retries=3, expires=datetime.timedelta(minutes=5))
def report(day: str) -> int:
    return len(day)


@ok.task(queue=5)  # type: ignore[call-overload, untyped-decorator]  # a queue is a name
def wrong_queue() -> None: ...


def check() -> None:
    handle = ok.result("f3c9")
    assert_type(handle, AsyncResult[object])
    assert_type(ok.result("f3c9", report), AsyncResult[int])
    report.apply_async(("monday",), eta=datetime.timedelta(seconds=5), expires=30)
    report.apply_async(("monday",), countdown="5")  # type: ignore[arg-type]
