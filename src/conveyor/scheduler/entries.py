"""Periodic entries: what to send (a Signature), when (a Schedule), and how (options), plus the pure plan.

An entry is declared with ``@app.periodic(...)`` above ``@app.task`` or with
``app.add_periodic(task.s(...), ...)``; its options are checked at declaration, so a typo fails at
import time. :func:`plan` decides, from the last slot recorded for an entry and the time now,
which slots to fire: pure, unit-tested without a broker.
"""

from __future__ import annotations

import dataclasses
import datetime
import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, TypedDict, get_args

from conveyor.errors import ConfigurationError
from conveyor.message import encode
from conveyor.scheduler.schedules import Schedule, make_schedule
from conveyor.workflows.signature import Signature

if TYPE_CHECKING:
    from conveyor.task import BaseTask

#: What to do with slots missed by more than ``beat_grace`` seconds (all beats down, or a long pause).
MissedPolicy = Literal["skip", "run_once"]
MISSED_POLICIES: tuple[str, ...] = get_args(MissedPolicy)
#: Most slots one plan fires: a huge catch-up is spread over several ticks instead of one long one.
MAX_SLOTS_PER_PLAN = 1000


class PeriodicOptions(TypedDict, total=False):
    """Options of one periodic entry (``@app.periodic(...)``, ``app.add_periodic(sig, ...)``).

    Attributes:
        cron: a cron expression, e.g. ``"*/5 * * * *"`` (exactly one of cron and every).
        every: an interval, a timedelta or seconds (at least one second); slots are aligned on the epoch.
        tz: IANA time zone of a cron expression (default UTC).
        name: the entry's name, unique per app (default: the task's name).
        queue: queue the runs go to (default: the task's).
        priority: 0-9 (default: the task's).
        expires: seconds after its slot after which a run is not started (recorded REVOKED).
        missed: ``"skip"`` (default) drops slots missed by more than ``beat_grace``; ``"run_once"``
            runs the latest of them once, then goes on with the schedule.
        catch_up: False (default) coalesces the slots that are due at once (after a restart, a
            take-over or a stall) into one run, the latest; True fires each of them, oldest first.
    """

    cron: str
    every: datetime.timedelta | float
    tz: str
    name: str
    queue: str
    priority: int
    expires: float
    missed: MissedPolicy
    catch_up: bool


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    """One periodic entry of an app: send ``signature`` on every slot of ``schedule``."""

    name: str
    signature: Signature[Any]
    schedule: Schedule
    missed: MissedPolicy = "skip"
    queue: str | None = None
    priority: int | None = None
    expires: float | None = None
    catch_up: bool = False


def build_entry(task: BaseTask[Any, Any], signature: Signature[Any], options: Mapping[str, Any]) -> Entry:
    """Check a declaration and build its entry.

    Raises:
        ConfigurationError: an unknown option, a bad value, or arguments the task does not accept.
        EncodeError: an argument does not serialize, or would not arrive as given (``conveyor.typed``).
    """
    unknown = sorted(set(options) - set(PeriodicOptions.__annotations__))
    if unknown:
        known = ", ".join(PeriodicOptions.__annotations__)
        raise ConfigurationError(f"unknown periodic option(s) {', '.join(unknown)}; known: {known}")
    schedule = make_schedule(options.get("cron"), options.get("every"), options.get("tz"))
    missed = options.get("missed", "skip")
    if missed not in MISSED_POLICIES:
        raise ConfigurationError(f"missed must be one of {', '.join(MISSED_POLICIES)}, got {missed!r}")
    expires = options.get("expires")
    if expires is not None and (not isinstance(expires, int | float) or expires <= 0):
        raise ConfigurationError(f"expires must be positive seconds, got {expires!r}")
    catch_up = options.get("catch_up", False)
    if not isinstance(catch_up, bool):
        raise ConfigurationError(f"catch_up must be True or False, got {catch_up!r}")
    _check_call(task, signature)
    if task.types.typed:  # a datetime for a date parameter fails here, not at every slot
        task.types.check(signature.args, signature.kwargs)
    entry = Entry(
        name=options.get("name") or task.name,
        signature=signature,
        schedule=schedule,
        missed=missed,
        queue=options.get("queue"),
        priority=options.get("priority"),
        expires=expires,
        catch_up=catch_up,
    )
    # Build and encode one message now, so that a bad priority or an argument that does not
    # serialize fails here (EncodeError naming it), not at the first slot.
    sample = task.message(signature.args, signature.kwargs, queue=entry.queue, priority=entry.priority)
    encode(sample, task.app.settings.max_message_size)
    return entry


def _check_call(task: BaseTask[Any, Any], signature: Signature[Any]) -> None:
    try:
        inspect.signature(task.fn).bind(*signature.args, **signature.kwargs)
    except TypeError as exc:
        raise ConfigurationError(
            f"periodic {signature!r} does not match {task.name}{inspect.signature(task.fn)}: {exc}; "
            "give arguments with app.add_periodic(task.s(...), ...)"
        ) from None


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """What one entry does now: fire these slots (oldest first), then record ``last``."""

    fire: tuple[datetime.datetime, ...]
    last: datetime.datetime


def plan(
    schedule: Schedule,
    last: datetime.datetime | None,
    now: datetime.datetime,
    grace: datetime.timedelta,
    missed: MissedPolicy,
    *,
    catch_up: bool = False,
) -> Plan:
    """The slots to fire now, given the last slot recorded (None: the entry never ran).

    A new entry starts with the first slot after ``now``. Slots at most ``grace`` old are late, and
    fire: only the latest of them by default (a beat back from a restart, a take-over or a stall
    runs the entry once, as if it had been there), each of them with ``catch_up``. Older slots were
    missed: ``skip`` drops them, ``run_once`` fires the latest of them.
    """
    if last is None:
        return Plan((), now)
    if catch_up:
        return _plan_each(schedule, last, now, grace, missed)
    if schedule.next_fire(last) > now:
        return Plan((), last)
    latest = schedule.next_fire(schedule.previous_fire(now))  # ``now`` itself when it is a slot
    if latest > now:
        latest = schedule.previous_fire(now)
    on_time = now - latest <= grace
    return Plan((latest,) if on_time or missed == "run_once" else (), latest)


def _plan_each(
    schedule: Schedule,
    last: datetime.datetime,
    now: datetime.datetime,
    grace: datetime.timedelta,
    missed: MissedPolicy,
) -> Plan:
    """:func:`plan` with ``catch_up``: every late slot fires, at most :data:`MAX_SLOTS_PER_PLAN` per call."""
    fire: list[datetime.datetime] = []
    start = last
    cutoff = now - grace
    if last < cutoff:
        latest_missed = schedule.previous_fire(cutoff)
        if latest_missed > last:
            start = latest_missed
            if missed == "run_once":
                fire.append(latest_missed)
    slot = schedule.next_fire(start)
    while slot <= now and len(fire) < MAX_SLOTS_PER_PLAN:
        fire.append(slot)
        slot = schedule.next_fire(slot)
    return Plan(tuple(fire), fire[-1] if fire else start)
