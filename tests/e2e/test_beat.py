"""Several real ``conveyor beat`` (and ``worker --beat``) processes on one broker: one leads, a
standby takes over when the leader is killed, and every slot of a 1-second schedule fires once.

Most tests here declare the entry with ``catch_up=True`` (``BEAT_APP_CATCH_UP=1``) so that every slot
fires and a skipped one shows; the default (late slots coalesce into one run) has its own tests: a
beat restarted after a stop and a take-over after a kill each run the entry once, not in a burst."""

from __future__ import annotations

import datetime
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from conveyor import App, State
from conveyor.message import decode
from conveyor.scheduler.beat import Beat, slot_task_id
from conveyor.signing import unframe
from tests.conftest import backend_url_for, url_for
from tests.e2e.conftest import ROOT, WorkerProcess, kill_leftovers, wait_until

LEASE = 3.0
INTERVAL = 0.25
FIRED = re.compile(r"fired beat_tick for (\S+) as")


class Proc(WorkerProcess):
    """One ``python -m conveyor ...`` subprocess (beat or worker) logging to a file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:  # its own command, not the e2e worker
        self.log = log
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "conveyor", *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
            )

    def fired(self) -> list[str]:
        return FIRED.findall(self.output())

    def leads(self) -> bool:
        return "now leading" in self.output()


@pytest.fixture(params=["sqlite", "redis", "amqp"])
def env(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {
        "CONVEYOR_BROKER_URL": url_for(request.param, tmp_path, request),
        # RabbitMQ is no store: the beat's lease, claims and state live in a SQLite backend beside it
        "CONVEYOR_BACKEND_URL": backend_url_for(request.param, tmp_path, request),
        "CONVEYOR_BEAT_LEASE": str(LEASE),
        "CONVEYOR_BEAT_INTERVAL": str(INTERVAL),
        "CONVEYOR_BEAT_GRACE": "30",
        "CONVEYOR_LEASE": "5",
        "CONVEYOR_SHUTDOWN_GRACE": "5",
        "BEAT_APP_CATCH_UP": "1",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return {**os.environ, **values, "PYTHONPATH": str(ROOT)}


@pytest.fixture
def app(env: dict[str, str]) -> Iterator[App]:
    """The test's side of the broker, opened first (a fresh SQLite file is created once)."""
    instance = App("beat-e2e")
    instance.backend.get_value("warm-up")
    instance.broker.stats()
    yield instance
    instance.close()


@pytest.fixture
def start(env: dict[str, str], tmp_path: Path) -> Iterator[Callable[[int, str], list[Proc]]]:
    """Start ``count`` copies of ``python -m conveyor <command> tests.apps.beat_app:app``; all killed at the end."""
    procs: list[Proc] = []

    def launch(count: int, command: str) -> list[Proc]:
        args = command.split()
        args.insert(1, "tests.apps.beat_app:app")
        new = [Proc(args, env, tmp_path / f"{args[0]}-{len(procs) + i}.log") for i in range(count)]
        procs.extend(new)
        return new

    yield launch
    kill_leftovers(procs)


def queued_slots(app: App) -> tuple[Counter[str], list[float]]:
    """The beat slots of every message in the default queue, and their enqueue times, sorted."""
    deliveries = app.broker.reserve(["default"], 10_000, owner="test", lease=60)
    messages = [decode(unframe(d.body)) for d in deliveries]
    return Counter(m.headers["beat_slot"] for m in messages), sorted(m.created for m in messages)


def assert_contiguous(slots: list[str]) -> None:
    times = sorted(datetime.datetime.fromisoformat(s).timestamp() for s in slots)
    assert [round(b - a, 3) for a, b in itertools.pairwise(times)] == [1.0] * (len(times) - 1), times


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_three_beats_fire_every_slot_once_across_a_leader_kill(
    app: App, start: Callable[[int, str], list[Proc]]
) -> None:
    # Given three beats on one broker, with a 1-second schedule and a 3-second lease
    beats = start(3, "beat")
    wait_until(lambda: any(p.leads() for p in beats), 30, "a beat to lead")
    [leader] = [p for p in beats if p.leads()]
    # When the leader has fired a few slots, it is killed (-9)
    wait_until(lambda: len(leader.fired()) >= 4, 20, f"the leader to fire 4 slots:\n{leader.output()}")
    leader.proc.kill()
    leader.proc.wait(timeout=10)
    standbys = [p for p in beats if p is not leader]
    # Then a standby takes over and goes on firing
    wait_until(lambda: sum(len(p.fired()) for p in standbys) >= 5, LEASE + 20, "a standby to take over and fire")
    for p in standbys:
        p.stop()
    # And every slot from the first to the last fired exactly once, none skipped
    slots, created = queued_slots(app)
    assert slots and set(slots.values()) == {1}, slots
    assert_contiguous(list(slots))
    logged = Counter(s for p in beats for s in p.fired())
    assert set(logged.values()) == {1}, f"a slot was fired by two beats: {logged}"
    # And no gap between two enqueues was longer than the lease (plus a tick and scheduling slack)
    gaps = [b - a for a, b in itertools.pairwise(created)]
    assert max(gaps) <= LEASE + INTERVAL + 1.5, gaps
    assert max(gaps) >= 1.5, "the take-over should show as one longer gap"


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_two_workers_with_embedded_beats_run_each_slot_once(app: App, start: Callable[[int, str], list[Proc]]) -> None:
    # Given two workers started with --beat on one broker
    workers = start(2, "worker -c 1 --beat")
    # When their beats have fired 4 slots
    wait_until(lambda: sum(len(p.fired()) for p in workers) >= 4, 40, "the embedded beat to fire 4 slots")
    # Then the runs of those slots succeed, each under the task id derived from its slot
    for slot in {s for p in workers for s in p.fired()}:
        result = app.result(slot_task_id("beat-e2e", "beat_tick", datetime.datetime.fromisoformat(slot)))
        logs = "\n".join(p.output() for p in workers)
        wait_until(lambda r=result: r.state is State.SUCCESS, 20, f"the run of {slot} to succeed:\n{logs}")  # type: ignore[misc]
    # When one worker is killed with -9 and the other stops gracefully
    beats = [c for w in workers for c in psutil.Process(w.proc.pid).children() if "--parent" in c.cmdline()]
    assert len(beats) == 2
    workers[0].proc.kill()
    workers[1].stop()
    # Then their beat subprocesses are gone too (the killed worker's notices its parent died)
    _, alive = psutil.wait_procs(beats, timeout=LEASE + 10)
    assert not alive, alive
    # And each slot was fired by one beat only, none skipped
    logged = Counter(s for p in workers for s in p.fired())
    assert set(logged.values()) == {1}, logged
    assert_contiguous(list(logged))


def test_beat_list_and_status_show_the_entries(app: App, env: dict[str, str]) -> None:
    def cli(*args: str) -> str:
        wide = {**env, "COLUMNS": "200"}  # rich wraps tables to 80 columns off a terminal
        done = subprocess.run(
            [sys.executable, "-m", "conveyor", *args], cwd=ROOT, env=wide, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr + done.stdout
        return done.stdout

    # Given the beat app, whose beat_tick entry fired one slot (through the test's twin declaration)
    @app.periodic(every=1)
    @app.task(name="beat_tick")
    def beat_tick() -> None: ...

    slot = datetime.datetime.fromtimestamp(int(time.time()), datetime.UTC)
    Beat(app).run_entry(app.schedule["beat_tick"], slot)  # starts the entry
    assert Beat(app).fire(app.schedule["beat_tick"], slot)
    Beat(app).run_entry(app.schedule["beat_tick"], slot + datetime.timedelta(seconds=1))
    # Then beat --list prints the entry and its schedule
    listed = cli("beat", "tests.apps.beat_app:app", "--list")
    assert "beat_tick" in listed and "every 0:00:01" in listed and "catch up" in listed
    # And status --json lists it with its next run and the last slot recorded
    asked = time.time()  # the command reads the clock after this; on a loaded machine it may take seconds
    [entry] = json.loads(cli("status", "tests.apps.beat_app:app", "--json"))["periodic"]
    assert entry["name"] == "beat_tick"
    assert entry["catch_up"] is True  # declared so by the beat app under BEAT_APP_CATCH_UP=1
    assert entry["last_fired"] == (slot + datetime.timedelta(seconds=1)).isoformat()
    assert datetime.datetime.fromisoformat(entry["next_run"]).timestamp() > asked - 1


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_leader_paused_after_its_claim_for_longer_than_its_lease_still_fires_that_slot_once(
    app: App, env: dict[str, str], tmp_path: Path
) -> None:
    # Given two beats with a 2-second lease, one of which stops itself (SIGSTOP) right after its
    # third successful slot claim, before it enqueues that slot (the tests.apps.beat_app hook)
    marker = tmp_path / "paused"
    paused_env = {**env, "CONVEYOR_BEAT_LEASE": "2", "BEAT_APP_STOP_AFTER_CLAIM": str(marker)}
    beats = [Proc(["beat", "tests.apps.beat_app:app"], paused_env, tmp_path / f"beat-{i}.log") for i in range(2)]
    try:
        wait_until(lambda: marker.exists() and " " in marker.read_text(), 30, "a beat to pause after a claim")
        paused_at = time.monotonic()
        pid_text, key = marker.read_text().split()
        [paused] = [p for p in beats if p.proc.pid == int(pid_text)]
        [other] = [p for p in beats if p is not paused]
        # When it stays stopped for 4 s, twice its lease, while the other beat takes over
        wait_until(other.leads, 10, f"the other beat to take over:\n{other.output()}")
        time.sleep(max(0.0, paused_at + 4.0 - time.monotonic()))
        os.kill(paused.proc.pid, signal.SIGCONT)
        # And both go on for a few slots
        wait_until(lambda: len(other.fired()) >= 4, 20, f"the new leader to fire 4 slots:\n{other.output()}")
    finally:
        for p in beats:
            if p.proc.poll() is None:
                os.kill(p.proc.pid, signal.SIGCONT)
        for p in beats:
            p.stop()
    # Then the slot it had claimed was enqueued once (by the paused beat, late), and no slot was
    # skipped or fired twice from the first to the last
    slot = datetime.datetime.fromtimestamp(int(key.rsplit(":", 1)[1]) / 1000, datetime.UTC).isoformat()
    slots, _ = queued_slots(app)
    logs = "\n".join(p.output() for p in beats)
    assert slots[slot] == 1, f"the claimed slot {slot} was not enqueued:\n{logs}"
    assert set(slots.values()) == {1}, slots
    assert_contiguous(list(slots))
    logged = Counter(s for p in beats for s in p.fired())
    assert logged[slot] == 1 and set(logged.values()) == {1}, logged


def assert_no_burst(created: list[float]) -> None:
    """No three runs of the 1-second entry were enqueued within a second (a burst).

    Two may be: the one late run standing for the slots a beat missed, then the next slot on time.
    """
    spans = [round(c - a, 3) for a, _, c in zip(created, created[1:], created[2:], strict=False)]
    assert min(spans) >= 0.9, f"a burst of runs: {[round(b - a, 3) for a, b in itertools.pairwise(created)]}"


@pytest.mark.slow
@pytest.mark.timeout(90)
# Each mode on some broker, not each on every one: the catch-up decision is the beat's own, and
# tests/conformance/test_beat.py runs both modes over every engine in this process.
@pytest.mark.parametrize(
    ("env", "catch_up"),
    [("sqlite", True), ("redis", False), ("amqp", False)],
    indirect=["env"],
    ids=["sqlite-catch_up", "redis", "amqp"],
)
def test_a_beat_restarted_after_a_stop_runs_the_late_slots_once_or_each_with_catch_up(
    app: App, env: dict[str, str], tmp_path: Path, catch_up: bool
) -> None:
    # Given a beat on the 1-second entry, declared with or without catch_up, that fired a few slots
    run_env = {**env, "BEAT_APP_CATCH_UP": "1" if catch_up else "0"}
    first = Proc(["beat", "tests.apps.beat_app:app"], run_env, tmp_path / "beat-first.log")
    try:
        wait_until(lambda: len(first.fired()) >= 2, 30, f"the beat to fire 2 slots:\n{first.output()}")
        # When it is stopped (a deploy) for 4 s and started again
        assert first.stop() == 0, first.output()
        time.sleep(4)
        second = Proc(["beat", "tests.apps.beat_app:app"], run_env, tmp_path / "beat-second.log")
        wait_until(lambda: len(second.fired()) >= 3, 30, f"the new beat to fire 3 runs:\n{second.output()}")
        assert second.stop() == 0, second.output()
    finally:
        kill_leftovers([first, *([second] if "second" in locals() else [])])
    # Then each slot was enqueued once
    slots, created = queued_slots(app)
    assert set(slots.values()) == {1}, slots
    before, after = sorted(first.fired()), sorted(second.fired())
    gap = datetime.datetime.fromisoformat(after[0]) - datetime.datetime.fromisoformat(before[-1])
    if catch_up:
        # And, with catch_up, every slot of the stop fired at the restart: none is missing
        assert_contiguous(list(slots))
    else:
        # And the slots of the 4-second stop made one run (the latest), not a burst at the restart
        assert gap >= datetime.timedelta(seconds=4), (before, after)
        assert_no_burst(created)


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_standby_taking_over_from_a_killed_leader_runs_the_late_slots_once(
    app: App, env: dict[str, str], tmp_path: Path
) -> None:
    # Given two beats on the 1-second entry (without catch_up), one leading and firing
    run_env = {**env, "BEAT_APP_CATCH_UP": "0"}
    beats = [Proc(["beat", "tests.apps.beat_app:app"], run_env, tmp_path / f"beat-{i}.log") for i in range(2)]
    try:
        wait_until(lambda: any(p.leads() for p in beats), 30, "a beat to lead")
        [leader] = [p for p in beats if p.leads()]
        [standby] = [p for p in beats if p is not leader]
        wait_until(lambda: len(leader.fired()) >= 2, 20, f"the leader to fire 2 slots:\n{leader.output()}")
        # When the leader is killed (-9): its 3-second lease must lapse before the standby leads
        leader.proc.kill()
        leader.proc.wait(timeout=10)
        wait_until(lambda: len(standby.fired()) >= 3, LEASE + 20, f"the standby to fire 3 runs:\n{standby.output()}")
        standby.stop()
    finally:
        kill_leftovers(beats)
    # Then each slot was enqueued once, the take-over's late slots as one run (no burst), and the
    # take-over shows as one longer gap between two slots
    slots, created = queued_slots(app)
    assert set(slots.values()) == {1}, slots
    assert_no_burst(created)
    times = sorted(datetime.datetime.fromisoformat(s).timestamp() for s in slots)
    assert max(b - a for a, b in itertools.pairwise(times)) >= 2.0, times
