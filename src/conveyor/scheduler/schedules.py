"""Schedules: when a periodic task is due. Pure: no clock, no broker; the caller passes the time.

A schedule is a sequence of **slots**, instants at which one run is due. ``next_fire(after)`` is the
first slot strictly after ``after`` and ``previous_fire(before)`` the last slot strictly before
``before``. Every beat process computes the same slots from the same declaration, whatever its start
time, which is what lets a slot be a deduplication key (see ``docs/beat.md``).

- :class:`Interval` slots are the multiples of ``every`` since the Unix epoch (plus an optional
  ``offset``), so a 30-second interval fires at :00 and :30 of every minute on every machine.
- :class:`Cron` slots come from a cron expression read by croniter in a zoneinfo time zone.
  Daylight saving time follows croniter's definition, pinned by ``tests/unit/test_schedules.py``:
  a wall-clock time skipped by a spring-forward change fires at the first valid instant after the
  gap (``30 2 * * *`` fires at 03:00 that day); a wall-clock time repeated by a fall-back change
  fires at both instants (``30 2 * * *`` fires at 02:30 summer time and one hour later at 02:30
  winter time); fixed-step expressions (``*/15 * * * *``) keep firing every 15 real minutes.
"""

from __future__ import annotations

import abc
import dataclasses
import datetime
import zoneinfo
from typing import TYPE_CHECKING

from conveyor.errors import ConfigurationError

if TYPE_CHECKING:
    import croniter

UTC = datetime.UTC
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=UTC)
#: The shortest interval: a beat wakes at most a few times a second, so shorter periods make no sense.
MIN_INTERVAL = datetime.timedelta(seconds=1)


class Schedule(abc.ABC):
    """A sequence of slots, the same in every process; slots are returned in UTC.

    UTC because Python never finds a datetime in a repeated (fall-back) hour of one zone equal to
    any datetime of another zone (PEP 495), which would break slot comparisons.
    """

    @abc.abstractmethod
    def next_fire(self, after: datetime.datetime) -> datetime.datetime:
        """The first slot strictly after ``after`` (an aware datetime)."""

    @abc.abstractmethod
    def previous_fire(self, before: datetime.datetime) -> datetime.datetime:
        """The last slot strictly before ``before`` (an aware datetime)."""

    @abc.abstractmethod
    def describe(self) -> str:
        """A short human description for ``conveyor beat --list`` and ``status``."""


@dataclasses.dataclass(frozen=True, slots=True)
class Interval(Schedule):
    """Every ``every``, on the multiples of ``every`` since the epoch, shifted by ``offset``.

    Raises:
        ConfigurationError: ``every`` under one second, or an offset outside ``[0, every)``.
    """

    every: datetime.timedelta
    offset: datetime.timedelta = datetime.timedelta(0)

    def __post_init__(self) -> None:
        if not isinstance(self.every, datetime.timedelta) or self.every < MIN_INTERVAL:
            raise ConfigurationError(f"every must be a timedelta of at least {MIN_INTERVAL}, got {self.every!r}")
        if not datetime.timedelta(0) <= self.offset < self.every:
            raise ConfigurationError(f"offset must be within [0, every), got {self.offset!r}")

    def next_fire(self, after: datetime.datetime) -> datetime.datetime:
        steps = (_aware(after) - _EPOCH - self.offset) // self.every
        return _EPOCH + self.offset + (steps + 1) * self.every

    def previous_fire(self, before: datetime.datetime) -> datetime.datetime:
        elapsed = _aware(before) - _EPOCH - self.offset
        steps = elapsed // self.every
        if elapsed % self.every == datetime.timedelta(0):
            steps -= 1  # ``before`` is itself a slot: strictly before means one step back
        return _EPOCH + self.offset + steps * self.every

    def describe(self) -> str:
        return f"every {self.every}"


def _croniter(expression: str, start: datetime.datetime | None = None) -> croniter.croniter:
    """croniter's iterator, imported at first use.

    croniter and dateutil take ~65 ms of CPU to import; only an app with a :class:`Cron` entry pays
    that, not every ``conveyor`` command (each one imports this module).
    """
    from croniter import croniter as iterator

    return iterator(expression, start)


@dataclasses.dataclass(frozen=True, slots=True)
class Cron(Schedule):
    """A cron expression (5 fields, or 6 with seconds last as croniter reads them) in time zone ``tz``.

    Raises:
        ConfigurationError: an expression croniter rejects, or an unknown time zone.
    """

    expression: str
    tz: str = "UTC"

    def __post_init__(self) -> None:
        from croniter import CroniterBadCronError  # see _croniter

        _zone(self.tz)
        try:
            _croniter(self.expression)
        except (CroniterBadCronError, ValueError, TypeError) as exc:
            raise ConfigurationError(f"bad cron expression {self.expression!r}: {exc}") from None

    def next_fire(self, after: datetime.datetime) -> datetime.datetime:
        start = _aware(after).astimezone(_zone(self.tz))
        found: datetime.datetime = _croniter(self.expression, start).get_next(datetime.datetime)
        return found.astimezone(UTC)

    def previous_fire(self, before: datetime.datetime) -> datetime.datetime:
        start = _aware(before).astimezone(_zone(self.tz))
        found: datetime.datetime = _croniter(self.expression, start).get_prev(datetime.datetime)
        return found.astimezone(UTC)

    def describe(self) -> str:
        return f"cron {self.expression} ({self.tz})"


def make_schedule(
    cron: str | None = None, every: datetime.timedelta | float | None = None, tz: str | None = None
) -> Schedule:
    """The schedule one declaration asks for: exactly one of ``cron`` or ``every`` (seconds or a timedelta).

    Raises:
        ConfigurationError: neither or both given, ``tz`` with ``every``, or a bad value.
    """
    if (cron is None) == (every is None):
        raise ConfigurationError("give exactly one of cron='...' or every=timedelta(...)")
    if cron is not None:
        return Cron(cron, tz or "UTC")
    if tz is not None:
        raise ConfigurationError("tz= applies to cron schedules only (an interval is the same in every zone)")
    if isinstance(every, int | float) and not isinstance(every, bool):
        every = datetime.timedelta(seconds=every)
    return Interval(every)  # type: ignore[arg-type]  # a wrong type is reported by Interval itself


def _aware(moment: datetime.datetime) -> datetime.datetime:
    if moment.tzinfo is None:
        raise ConfigurationError(f"schedules take aware datetimes, got the naive {moment!r}")
    return moment


def _zone(name: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
        raise ConfigurationError(f"unknown time zone {name!r} (an IANA name such as 'Europe/Paris')") from None
