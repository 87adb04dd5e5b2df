"""The scheduler: periodic entries (``@app.periodic``), their schedules, and the Beat that fires them."""

from __future__ import annotations

from conveyor.scheduler.entries import Entry, MissedPolicy, PeriodicOptions
from conveyor.scheduler.schedules import Cron, Interval, Schedule

__all__ = ["Cron", "Entry", "Interval", "MissedPolicy", "PeriodicOptions", "Schedule"]
