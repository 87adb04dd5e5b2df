"""Schedules and the pure plan: next/previous slots, DST changes, missed-run policies. No broker."""

from __future__ import annotations

import datetime
import itertools
from zoneinfo import ZoneInfo

import pytest

from conveyor import ConfigurationError
from conveyor.scheduler import Cron, Interval
from conveyor.scheduler.entries import MAX_SLOTS_PER_PLAN, plan
from conveyor.scheduler.schedules import make_schedule

UTC = datetime.UTC
PARIS = ZoneInfo("Europe/Paris")


def at(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, tz: datetime.tzinfo = UTC
) -> datetime.datetime:
    return datetime.datetime(year, month, day, hour, minute, second, tzinfo=tz)


def test_interval_slots_are_aligned_on_the_epoch_whatever_the_start() -> None:
    every = Interval(datetime.timedelta(seconds=30))
    # Given two beats started at different instants, they compute the same slots
    assert every.next_fire(at(2026, 1, 1, 12, 0, 7)) == at(2026, 1, 1, 12, 0, 30)
    assert every.next_fire(at(2026, 1, 1, 12, 0, 29)) == at(2026, 1, 1, 12, 0, 30)
    # And next/previous are strict: a slot itself is not after or before itself
    assert every.next_fire(at(2026, 1, 1, 12, 0, 30)) == at(2026, 1, 1, 12, 1, 0)
    assert every.previous_fire(at(2026, 1, 1, 12, 0, 30)) == at(2026, 1, 1, 12, 0, 0)
    assert every.previous_fire(at(2026, 1, 1, 12, 0, 31)) == at(2026, 1, 1, 12, 0, 30)


def test_interval_with_an_offset() -> None:
    hourly_at_ten_past = Interval(datetime.timedelta(hours=1), offset=datetime.timedelta(minutes=10))
    assert hourly_at_ten_past.next_fire(at(2026, 1, 1, 12, 30)) == at(2026, 1, 1, 13, 10)


def test_cron_in_a_time_zone() -> None:
    # Given 09:00 Paris time in winter (UTC+1)
    daily = Cron("0 9 * * *", tz="Europe/Paris")
    assert daily.next_fire(at(2026, 1, 10, 12)) == at(2026, 1, 11, 8)
    assert daily.previous_fire(at(2026, 1, 10, 12)) == at(2026, 1, 10, 8)
    # And in summer (UTC+2)
    assert daily.next_fire(at(2026, 7, 10, 12)) == at(2026, 7, 11, 7)


def test_cron_across_spring_forward_fires_the_skipped_time_after_the_gap() -> None:
    # Given Paris, 2026-03-29: 02:00 CET jumps to 03:00 CEST, so 02:30 does not exist that day
    daily = Cron("30 2 * * *", tz="Europe/Paris")
    # Then croniter fires it at the first valid instant after the gap, 03:00 CEST (01:00 UTC)
    fired = daily.next_fire(at(2026, 3, 29, 0, 0))
    assert fired == at(2026, 3, 29, 3, 0, tz=PARIS) == at(2026, 3, 29, 1, 0)
    # And the next day it is 02:30 CEST again
    assert daily.next_fire(fired) == at(2026, 3, 30, 0, 30)


def test_cron_across_fall_back_fires_a_repeated_time_at_both_instants() -> None:
    # Given Paris, 2026-10-25: 03:00 CEST goes back to 02:00 CET, so 02:30 happens twice
    daily = Cron("30 2 * * *", tz="Europe/Paris")
    first = daily.next_fire(at(2026, 10, 24, 23, 0))
    second = daily.next_fire(first)
    # Then croniter fires at 02:30 CEST (00:30 UTC) and at 02:30 CET (01:30 UTC)
    assert (first, second) == (at(2026, 10, 25, 0, 30), at(2026, 10, 25, 1, 30))
    assert daily.next_fire(second) == at(2026, 10, 26, 1, 30)


def test_cron_steps_keep_real_time_across_fall_back() -> None:
    # Given every 30 minutes through the repeated hour
    half_hourly = Cron("*/30 * * * *", tz="Europe/Paris")
    slots = [at(2026, 10, 24, 23, 45)]
    for _ in range(5):
        slots.append(half_hourly.next_fire(slots[-1]))
    # Then the slots are 30 real minutes apart, none repeated or lost
    gaps = {b - a for a, b in itertools.pairwise(slots[1:])}
    assert gaps == {datetime.timedelta(minutes=30)}
    assert slots[1] == at(2026, 10, 24, 0, 0, tz=UTC) + datetime.timedelta(days=1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one"),
        ({"cron": "* * * * *", "every": 5}, "exactly one"),
        ({"cron": "61 * * * *"}, "bad cron"),
        ({"cron": "* * * * *", "tz": "Mars/Olympus"}, "time zone"),
        ({"every": 0.5}, "at least"),
        ({"every": 5, "tz": "UTC"}, "cron schedules only"),
    ],
)
def test_bad_schedules_fail_at_declaration(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        make_schedule(**kwargs)  # type: ignore[arg-type]


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="aware"):
        Interval(datetime.timedelta(seconds=5)).next_fire(datetime.datetime(2026, 1, 1))


# -- plan: which slots fire now ------------------------------------------------------------------

EVERY_10S = Interval(datetime.timedelta(seconds=10))
GRACE = datetime.timedelta(seconds=60)


def test_a_new_entry_starts_with_the_first_slot_after_now() -> None:
    todo = plan(EVERY_10S, None, at(2026, 1, 1, 12, 0, 5), GRACE, "skip")
    assert todo.fire == ()
    assert todo.last == at(2026, 1, 1, 12, 0, 5)


def test_late_slots_coalesce_into_one_run_of_the_latest() -> None:
    # Given the last slot fired at 12:00:00 and a take-over (or a restart) 25 s later
    todo = plan(EVERY_10S, at(2026, 1, 1, 12), at(2026, 1, 1, 12, 0, 25), GRACE, "skip")
    # Then the two slots since then make one run: the latest (12:00:20), recorded as the last slot
    assert todo.fire == (at(2026, 1, 1, 12, 0, 20),)
    assert todo.last == at(2026, 1, 1, 12, 0, 20)


def test_a_slot_due_exactly_now_is_the_latest() -> None:
    todo = plan(EVERY_10S, at(2026, 1, 1, 12), at(2026, 1, 1, 12, 0, 30), GRACE, "skip")
    assert todo.fire == (at(2026, 1, 1, 12, 0, 30),)


def test_with_catch_up_due_slots_within_grace_fire_each_even_late() -> None:
    # Given the last slot fired at 12:00:00 and a take-over 25 s later, on an entry with catch_up
    todo = plan(EVERY_10S, at(2026, 1, 1, 12), at(2026, 1, 1, 12, 0, 25), GRACE, "skip", catch_up=True)
    # Then the two slots since then fire, oldest first
    assert todo.fire == (at(2026, 1, 1, 12, 0, 10), at(2026, 1, 1, 12, 0, 20))
    assert todo.last == at(2026, 1, 1, 12, 0, 20)


def test_nothing_is_due_before_the_next_slot() -> None:
    todo = plan(EVERY_10S, at(2026, 1, 1, 12), at(2026, 1, 1, 12, 0, 9), GRACE, "skip")
    assert todo.fire == ()
    assert todo.last == at(2026, 1, 1, 12)


@pytest.mark.parametrize("missed", ["skip", "run_once"])
@pytest.mark.parametrize("catch_up", [False, True])
def test_missed_slots_after_downtime_follow_the_policy(missed: str, catch_up: bool) -> None:
    # Given an entry last fired at 12:00:00 and every beat down until 13:00:05
    now = at(2026, 1, 1, 13, 0, 5)
    todo = plan(EVERY_10S, at(2026, 1, 1, 12), now, GRACE, missed, catch_up=catch_up)  # type: ignore[arg-type]
    on_time = (*tuple(at(2026, 1, 1, 12, 59, s) for s in range(10, 60, 10)), at(2026, 1, 1, 13))
    latest_missed = at(2026, 1, 1, 12, 59, 0)
    if not catch_up:  # Then one run, the latest slot (on time: the policy for missed slots has nothing to add)
        assert todo.fire == (at(2026, 1, 1, 13),)
    elif missed == "skip":  # Then the slots of the last minute (within grace) fire; the older ones were missed
        assert todo.fire == on_time
    else:  # run_once: the latest missed slot runs once, first
        assert todo.fire == (latest_missed, *on_time)
    assert todo.last == at(2026, 1, 1, 13)


@pytest.mark.parametrize("missed", ["skip", "run_once"])
@pytest.mark.parametrize("catch_up", [False, True])
def test_a_missed_daily_run(missed: str, catch_up: bool) -> None:
    # Given a daily 09:00 entry last fired yesterday and beat down from 08:50 to 09:30
    daily = Cron("0 9 * * *")
    grace = datetime.timedelta(minutes=5)
    todo = plan(daily, at(2026, 1, 9, 9), at(2026, 1, 10, 9, 30), grace, missed, catch_up=catch_up)  # type: ignore[arg-type]
    # Then skip drops today's run (and records it as handled); run_once runs it now
    assert todo.fire == (() if missed == "skip" else (at(2026, 1, 10, 9),))
    assert todo.last == at(2026, 1, 10, 9)


def test_a_huge_catch_up_is_spread_over_ticks() -> None:
    every_second = Interval(datetime.timedelta(seconds=1))
    now = at(2026, 1, 1, 12)
    an_hour_ago = now - datetime.timedelta(hours=1)
    todo = plan(every_second, an_hour_ago, now, datetime.timedelta(hours=2), "skip", catch_up=True)
    assert len(todo.fire) == MAX_SLOTS_PER_PLAN
    assert todo.last == todo.fire[-1]


def test_without_catch_up_an_hour_of_missed_seconds_is_one_run() -> None:
    every_second = Interval(datetime.timedelta(seconds=1))
    now = at(2026, 1, 1, 12) + datetime.timedelta(milliseconds=500)
    todo = plan(every_second, now - datetime.timedelta(hours=1), now, datetime.timedelta(hours=2), "skip")
    assert todo.fire == (at(2026, 1, 1, 12),)
    assert todo.last == at(2026, 1, 1, 12)


def test_cron_slots_coalesce_too() -> None:
    # Given a 5-minute cron in Paris last fired at 10:00 UTC, and a beat back at 10:12
    every_5_min = Cron("*/5 * * * *", "Europe/Paris")
    todo = plan(every_5_min, at(2026, 1, 1, 10), at(2026, 1, 1, 10, 12), datetime.timedelta(minutes=15), "skip")
    # Then 10:05 and 10:10 make one run, at 10:10
    assert todo.fire == (at(2026, 1, 1, 10, 10),)
