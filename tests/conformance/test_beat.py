"""Beat over real brokers and backends (memory, SQLite, Redis), with the clock in the test's hands.

Declarations are checked at import time; each slot is enqueued once whatever the restarts, races
and leader changes; missed slots follow the entry's policy.
"""

from __future__ import annotations

import datetime
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import App, ConfigurationError, EncodeError, Signature, TaskNotRegistered
from conveyor.scheduler.beat import Beat, overview, slot_task_id
from tests.beat_clock import T0, Clock, fired_slots, iso, tick_at
from tests.conftest import backend_url_for, url_for


def make_app(url: str, *, catch_up: bool = False, **settings: Any) -> App:
    app = App("beat-test", broker=url, beat_lease=2.0, beat_interval=0.5, beat_grace=30.0, **settings)

    @app.periodic(every=datetime.timedelta(seconds=10), catch_up=catch_up)
    @app.task(name="tick")
    def tick() -> None: ...

    return app


@pytest.fixture
def url(broker_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    return url_for(broker_kind, tmp_path, request)


@pytest.fixture(params=["sqlite", "redis"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL that several App objects (several connections, as separate processes have) share."""
    return url_for(request.param, tmp_path, request)


@pytest.fixture
def app(url: str, broker_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[App]:
    # RabbitMQ is no result store: its app needs a backend (SQLite here), as on every other broker's own engine
    backend = backend_url_for(broker_kind, tmp_path, request) if broker_kind == "amqp" else None
    instance = make_app(url, backend=backend)
    yield instance
    instance.close()


# -- declarations --------------------------------------------------------------------------------


def test_declarations_are_checked_at_import_time() -> None:
    app = App("decl", broker="memory://")

    @app.task
    def report(kind: str, lang: str = "en") -> str:
        return kind + lang

    entry = app.add_periodic(report.s("daily", lang="fr"), cron="0 9 * * *", tz="Europe/Paris", queue="reports")
    assert entry.signature == Signature(report.name, ("daily",), {"lang": "fr"})
    assert app.schedule[report.name] is entry
    with pytest.raises(ConfigurationError, match="exists already; give name="):
        app.add_periodic(report.s("weekly"), cron="0 9 * * 1")
    with pytest.raises(ConfigurationError, match="unknown periodic option"):
        app.add_periodic(report.s("x"), every=60, name="x", retries=3)  # type: ignore[call-arg]
    with pytest.raises(ConfigurationError, match="missing a required argument"):
        app.periodic(every=60, name="y")(report)
    with pytest.raises(ConfigurationError, match="goes above @app"):
        app.periodic(every=60)(lambda: None)  # type: ignore[type-var]
    with pytest.raises(ConfigurationError, match="missed must be"):
        app.add_periodic(report.s("x"), every=60, name="z", missed="twice")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="catch_up must be True or False"):
        app.add_periodic(report.s("x"), every=60, name="c", catch_up="no")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="priority"):
        app.add_periodic(report.s("x"), every=60, name="p", priority=12)
    with pytest.raises(EncodeError):
        app.add_periodic(report.s(object()), every=60, name="e")  # type: ignore[call-overload]
    with pytest.raises(TaskNotRegistered):
        app.add_periodic(Signature("nowhere"), every=60)
    with pytest.raises(ConfigurationError, match="unknown option"):
        report.s("x").set(colour="red")  # type: ignore[call-arg]


def test_periodic_returns_the_task_unchanged() -> None:
    app = App("decl", broker="memory://")

    @app.periodic(every=30)
    @app.task
    def ping() -> str:
        return "pong"

    assert ping() == "pong"
    assert app.schedule[ping.name].schedule.describe() == "every 0:00:30"


# -- firing --------------------------------------------------------------------------------------


def test_each_slot_fires_once_as_time_passes(app: App) -> None:
    # Given a leading beat whose entry started at T0 - 5
    clock = Clock(T0 - 5)
    beat = Beat(app, clock=clock)
    beat.tick()
    # When the clock runs 35 s in steps of 0.5 s, ticking every step
    while clock.now < T0 + 30:
        clock.now += 0.5
        beat.tick()
    # Then slots T0 .. T0+30 were each enqueued once, with ids derived from the slot
    assert fired_slots(app) == Counter({iso(s): 1 for s in range(0, 31, 10)})
    entry = app.schedule["tick"]
    assert beat.last_fired(entry) == datetime.datetime.fromtimestamp(T0 + 30, datetime.UTC)
    assert slot_task_id("beat-test", "tick", beat.now()) != slot_task_id("beat-test", "other", beat.now())


def test_only_the_lease_holder_fires_and_a_standby_takes_over(shared_url: str) -> None:
    clock = Clock(T0 - 5)
    app, other = make_app(shared_url), make_app(shared_url)
    leader, standby = Beat(app, clock=clock), Beat(other, clock=clock)
    # Given a leader
    leader.tick()
    standby.tick()
    assert (leader.leading, standby.leading) == (True, False)
    # When the leader stops (giving its lease up), the standby leads from its next tick
    stop = threading.Event()
    stop.set()
    leader.run(stop)
    clock.now = T0 + 1
    standby.tick()
    assert standby.leading
    assert fired_slots(app) == Counter({iso(0): 1})
    app.close()
    other.close()


def test_a_restart_neither_repeats_nor_skips(shared_url: str) -> None:
    # Given a beat that fired T0 and T0+10, then stopped
    clock = Clock(T0 - 5)
    first_app = make_app(shared_url)
    first = Beat(first_app, clock=clock)
    for now in (T0 - 5, T0, T0 + 10, T0 + 15):
        clock.now = now
        first.tick()
    first_app.backend.release_lease(first.lease_name, first.owner)
    first_app.close()
    # When a new process (new app, new connections) starts 12 s later and runs to T0+40
    second_app = make_app(shared_url)
    second = Beat(second_app, clock=clock)
    for now in (T0 + 27, T0 + 30, T0 + 40):
        clock.now = now
        second.tick()
    # Then every slot from T0 to T0+40 fired exactly once (T0+20 late, within grace)
    assert fired_slots(second_app) == Counter({iso(s): 1 for s in range(0, 41, 10)})
    second_app.close()


@pytest.mark.parametrize("catch_up", [False, True])
def test_a_restart_after_a_short_downtime_runs_the_entry_once_unless_it_catches_up(
    shared_url: str, catch_up: bool
) -> None:
    # Given a beat that fired T0, then stopped (a deploy) for 25 s, under the slots' grace
    clock = Clock(T0 - 5)
    first_app = make_app(shared_url, catch_up=catch_up)
    first = Beat(first_app, clock=clock)
    tick_at(clock, (T0 - 5, T0, T0 + 1), first)
    first.run(_stopped())
    first_app.close()
    # When a new beat process starts at T0+26 and runs on to T0+30
    second_app = make_app(shared_url, catch_up=catch_up)
    second = Beat(second_app, clock=clock)
    tick_at(clock, (T0 + 26, T0 + 27, T0 + 30), second)
    # Then the two slots it came back late for (T0+10, T0+20) run once, as the latest of them,
    # or each with catch_up; and the schedule goes on with T0+30
    late = {iso(20): 1} if not catch_up else {iso(10): 1, iso(20): 1}
    assert fired_slots(second_app) == Counter({iso(0): 1, **late, iso(30): 1})
    second_app.close()


@pytest.mark.parametrize("catch_up", [False, True])
def test_a_standby_taking_over_from_a_dead_leader_runs_the_late_slots_once(shared_url: str, catch_up: bool) -> None:
    # Given a leader and a standby, the leader firing T0 and then dying (its lease is not given up)
    clock = Clock(T0 - 5)
    apps = [make_app(shared_url, catch_up=catch_up) for _ in range(2)]
    leader, standby = Beat(apps[0], clock=clock), Beat(apps[1], clock=clock)
    tick_at(clock, (T0 - 5, T0), leader, standby)
    assert (leader.leading, standby.leading) == (True, False)
    # When the standby ticks on until the leader's lease (2 s, on the backend's real clock) has lapsed
    clock.now = T0 + 35
    deadline = time.monotonic() + 10
    while not standby.leading and time.monotonic() < deadline:
        standby.tick()
        time.sleep(0.1)
    # Then it runs the three late slots once, as the latest (T0+30), or each with catch_up
    late = {iso(30): 1} if not catch_up else {iso(10): 1, iso(20): 1, iso(30): 1}
    assert fired_slots(apps[1]) == Counter({iso(0): 1, **late})
    for app in apps:
        app.close()


@pytest.mark.parametrize("missed", ["skip", "run_once"])
@pytest.mark.parametrize("catch_up", [False, True])
def test_missed_slots_after_downtime_follow_the_policy(shared_url: str, missed: str, catch_up: bool) -> None:
    # Given an entry with the policy, fired at T0, and every beat down for 2 minutes
    app = App("beat-test", broker=shared_url, beat_lease=2.0, beat_interval=0.5, beat_grace=30.0)

    @app.periodic(every=10, missed=missed, catch_up=catch_up)  # type: ignore[arg-type]
    @app.task(name="tick")
    def tick() -> None: ...

    clock = Clock(T0 - 1)
    beat = Beat(app, clock=clock)
    beat.tick()
    clock.now = T0
    beat.tick()
    # When a beat comes back at T0+125
    clock.now = T0 + 125
    beat.tick()
    # Then the run due now (T0+120) fires once. With catch_up, so do the other slots of the last
    # 30 s, and the older ones (T0+10 .. T0+90) are skipped, or run once as the latest of them (T0+90)
    expected = {iso(0): 1, iso(120): 1}
    if catch_up:
        expected |= {iso(100): 1, iso(110): 1}
        if missed == "run_once":
            expected[iso(90)] = 1
    assert fired_slots(app) == Counter(expected)
    # And the schedule goes on
    clock.now = T0 + 130
    beat.tick()
    assert fired_slots(app)[iso(130)] == 1
    app.close()


def test_two_beats_that_both_think_they_lead_run_each_coalesced_slot_once(shared_url: str) -> None:
    # Given two beats in separate apps (connections), both skipping the lease and running the entry
    # directly, at instants where two or three slots are due at once (only the latest fires)
    apps = [make_app(shared_url), make_app(shared_url)]
    for a in apps:
        a.backend.get_value("warm-up")
    beats = [Beat(a) for a in apps]
    entry = apps[0].schedule["tick"]
    beats[0].run_entry(entry, datetime.datetime.fromtimestamp(T0 - 5, datetime.UTC))  # starts the entry
    instants = [datetime.datetime.fromtimestamp(T0 + 25 * i, datetime.UTC) for i in range(12)]
    barrier = threading.Barrier(2)

    def race(i: int) -> None:
        for now in instants:
            barrier.wait(timeout=10)
            beats[i].run_entry(entry, now)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    # Then each instant's latest slot was enqueued exactly once, and nothing else
    assert fired_slots(apps[0]) == Counter({iso(25 * i - (25 * i) % 10): 1 for i in range(12)})
    for a in apps:
        a.close()


def _stopped() -> threading.Event:
    """An event already set: ``Beat.run`` with it gives its lease up and returns at once."""
    stop = threading.Event()
    stop.set()
    return stop


def test_two_beats_that_both_think_they_lead_fire_each_slot_once(shared_url: str) -> None:
    # Given two beats in separate apps (connections), both skipping the lease and firing directly
    apps = [make_app(shared_url), make_app(shared_url)]
    for a in apps:  # open the connections first: a fresh SQLite file's WAL switch is not for racing
        a.backend.get_value("warm-up")
    beats = [Beat(a) for a in apps]
    entry = apps[0].schedule["tick"]
    slots = [datetime.datetime.fromtimestamp(T0 + 10 * i, datetime.UTC) for i in range(20)]
    results: list[list[bool]] = [[], []]
    barrier = threading.Barrier(2)

    def race(i: int) -> None:
        barrier.wait(timeout=10)
        results[i] = [beats[i].fire(entry, slot) for slot in slots]

    threads = [threading.Thread(target=race, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    # Then for every slot exactly one beat enqueued, and the broker holds one message per slot
    assert [a + b for a, b in zip(*results, strict=True)] == [1] * len(slots)
    assert fired_slots(apps[0]) == Counter({slot.isoformat(): 1 for slot in slots})
    for a in apps:
        a.close()


def test_overview_shows_next_and_last_runs(app: App) -> None:
    clock = Clock(T0 - 5)
    beat = Beat(app, clock=clock)
    beat.tick()
    clock.now = T0
    beat.tick()
    [row] = overview(app)
    assert (row.name, row.task, row.schedule, row.missed) == ("tick", "tick.s()", "every 0:00:10", "skip")
    assert row.last_fired == iso(0)
    next_run = datetime.datetime.fromisoformat(row.next_run).timestamp()
    assert next_run % 10 == 0
    assert 0 < next_run - time.time() <= 10


def test_a_failing_entry_spares_the_others(app: App) -> None:
    # Given a second entry whose task was unregistered after its declaration
    @app.task(name="gone")
    def gone() -> None: ...

    app.add_periodic(gone.s(), every=10)
    del app.tasks["gone"]
    clock = Clock(T0 - 5)
    beat = Beat(app, clock=clock)
    beat.tick()
    # When its slot comes, it fails (logged), and the other entry fires all the same
    clock.now = T0
    beat.tick()
    assert fired_slots(app) == Counter({iso(0): 1})
    # And the failed slot is not retried forever (it would fail again): the next tick records it
    clock.now = T0 + 1
    beat.tick()
    assert beat.last_fired(app.schedule["gone"]) == datetime.datetime.fromtimestamp(T0, datetime.UTC)


def test_a_slot_already_in_the_broker_under_its_task_id_counts_as_fired(app: App) -> None:
    # Given a slot whose message already sits in the broker under the slot's task id (an earlier
    # send that landed although its reply was lost), without the slot's key
    clock = Clock(T0 - 5)
    beat = Beat(app, clock=clock)
    beat.tick()
    slot = datetime.datetime.fromtimestamp(T0, datetime.UTC)
    earlier = app.tasks["tick"].message(task_id=slot_task_id("beat-test", "tick", slot), headers={"beat_slot": iso(0)})
    app.send([earlier])
    # When the beat fires that slot
    clock.now = T0
    beat.tick()
    # Then the broker's refusal counts as "already enqueued": the slot is recorded as fired at once
    assert beat.last_fired(app.schedule["tick"]) == slot
    # And the schedule goes on, with one message per slot
    clock.now = T0 + 10
    beat.tick()
    assert fired_slots(app) == Counter({iso(0): 1, iso(10): 1})
