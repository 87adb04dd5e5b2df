"""Checked by mypy --strict, never run: periodic declarations and signatures keep their types.

Every ``# type: ignore[...]`` marks a line that MUST be a type error (``warn_unused_ignores``).
"""

from __future__ import annotations

import datetime
from typing import assert_type

from conveyor import App, Signature, Task

app = App("typing-periodic", broker="memory://")


@app.periodic(cron="*/5 * * * *", tz="Europe/Paris", missed="run_once")
@app.task
def sweep() -> int:
    return 0


@app.task
def report(kind: str, *, lang: str = "en") -> str:
    return kind + lang


def check() -> None:
    assert_type(sweep, Task[[], int])
    assert_type(report.s("daily", lang="fr"), Signature[str])
    app.add_periodic(report.s("daily"), every=datetime.timedelta(hours=1), name="hourly", queue="reports")
    report.s(1)  # type: ignore[call-overload]
    report.s("daily", colour="red")  # type: ignore[call-overload]
    app.add_periodic(report.s("x"), every=30, missed="sometimes")  # type: ignore[arg-type]
    app.add_periodic(report.s("x"), every=30, colour="red")  # type: ignore[call-arg]
    app.add_periodic(report.s("x"), every=30, name="each", catch_up=True)
    app.add_periodic(report.s("x"), every=30, catch_up="yes")  # type: ignore[arg-type]
