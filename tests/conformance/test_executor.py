"""The executor's conformance suite: what a worker does with each message, on every broker.

Runs, results, retries, schedules, progress, dead letters, expiry, revocation and size limits, over
memory, SQLite, Redis and RabbitMQ (with SQLite results), each test in this process through
``conveyor.testing.drain``, which runs the worker's executor and middleware chain. The behaviours
that need a real worker process (hard limits, kill -9, signals, pools) are in tests/e2e.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterator

import pytest

from conveyor import App, ConfigurationError, MessageTooLarge, ResultMissing, Retry, State, TaskFailed, current_context
from conveyor.message import decode
from conveyor.states import ResultRecord, encode_record
from conveyor.testing import drain
from tests.conftest import wait_until


@pytest.fixture
def app(broker_url: str, backend_url: str) -> Iterator[App]:
    instance = App("executor", broker=broker_url, backend=backend_url, max_message_size=2048, track_started=True)
    yield instance
    instance.close()


def depths(app: App) -> tuple[int, int, int, int]:
    """(ready, scheduled, in flight, dead) over every queue."""
    stats = app.broker.stats()
    return (
        sum(s.ready for s in stats),
        sum(s.scheduled for s in stats),
        sum(s.in_flight for s in stats),
        sum(s.dead for s in stats),
    )


def test_delay_sends_a_message_and_the_worker_stores_the_result(app: App) -> None:
    @app.task(name="add")
    def add(a: int, b: int) -> int:
        return a + b

    r = add.delay(2, 3)
    assert r.state is State.PENDING
    assert not r.ready()
    [outcome] = drain(app)
    assert outcome.state == "SUCCESS"
    assert r.get(timeout=1) == 5
    assert (r.state, r.ready(), r.successful(), r.result, r.progress) == (State.SUCCESS, True, True, 5, 1.0)


def test_failure_is_recorded_with_its_traceback(app: App) -> None:
    @app.task(name="boom")
    def boom() -> None:
        raise ValueError("kaboom")

    r = boom.delay()
    drain(app)
    assert r.state is State.FAILURE
    with pytest.raises(TaskFailed, match="ValueError: kaboom") as info:
        r.get(timeout=1)
    assert "raise ValueError" in info.value.traceback
    assert r.get(timeout=1, propagate=False) is None
    assert r.traceback is not None and "kaboom" in r.traceback


def test_retry_gives_up_after_max_and_non_matching_errors_fail_at_once(app: App) -> None:
    @app.task(name="always", retries=1, backoff=0.01, retry_on=(ConnectionError,))
    def always(kind: str) -> None:
        raise ConnectionError("down") if kind == "conn" else KeyError("nope")

    a, b = always.delay("conn"), always.delay("key")
    drain(app)
    assert [e.type for e in a.errors] == ["ConnectionError", "ConnectionError"]
    assert [e.type for e in b.errors] == ["KeyError"]


def test_raise_retry_from_inside_a_task(app: App) -> None:
    @app.task(name="later", retries=1)
    def later() -> int:
        if current_context().attempt == 0:
            raise Retry(countdown=0.05, reason="not yet")
        return 7

    r = later.delay()
    started = time.monotonic()
    drain(app)
    assert r.get(timeout=1) == 7
    assert time.monotonic() - started >= 0.05


def test_async_tasks_run_on_the_event_loop(app: App) -> None:
    @app.task(name="double")
    async def double(x: int) -> int:
        return x * 2

    r = double.delay(21)
    drain(app)
    assert r.get(timeout=1) == 42


def test_countdown_and_eta_wait_in_the_schedule(app: App) -> None:
    ran_at: list[float] = []

    @app.task(name="t")
    def t() -> int:
        ran_at.append(time.time())
        return 1

    # Given one task sent with a countdown and one with an eta, both 1 s ahead (long enough for a
    # loaded machine to look at the schedule before they are due), on a connection opened before:
    # a first call can take a second under load (Sentinel: a sentinel asked for the master first),
    # and a message whose eta passed on the way is ready at once
    app.broker.stats()
    due = time.time() + 1
    r1 = t.apply_async(countdown=1)
    r2 = t.apply_async(eta=datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=1))
    # Then both wait in the schedule, and run once due, never before (however slow the machine)
    [stats] = app.broker.stats()
    assert stats.scheduled == 2
    drain(app, timeout=5)
    assert (r1.get(timeout=1), r2.get(timeout=1)) == (1, 1)
    assert len(ran_at) == 2 and min(ran_at) >= due


def test_priority_queue_and_key_options_reach_the_message(app: App) -> None:
    @app.task(name="mail", queue="mail", priority=3)
    def mail() -> None: ...

    r = mail.apply_async(priority=9, key="k1")
    again = mail.apply_async(key="k1")
    assert again.id == r.id
    [delivery] = app.broker.reserve(["mail"], 5, owner="t", lease=5)
    message = decode(delivery.body)
    assert (message.queue, message.priority, message.key, delivery.priority) == ("mail", 9, "k1", 9)
    with pytest.raises(ConfigurationError, match="priority"):
        mail.apply_async(priority=10)


def test_progress_is_visible_while_running(app: App) -> None:
    seen: list[float | None] = []

    @app.task(name="p")
    def p() -> None:
        current_context().progress(0.4, note="halfway-ish")
        seen.append(app.result(current_context().id).progress)

    p.delay()
    drain(app)
    assert seen == [0.4]


def test_unknown_task_and_undecodable_message_go_to_dead_letters(app: App) -> None:
    from conveyor.brokers import Envelope

    app.broker.enqueue(
        [Envelope("bad1", "default", b"not json"), Envelope("bad2", "default", b'{"id":"x","task":"nope"}')]
    )
    outcomes = drain(app)
    assert [o.state for o in outcomes] == ["DEAD", "DEAD"]
    reasons = {d.id: d.reason for d in app.broker.dead_letters()}
    assert "undecodable" in reasons["bad1"]
    assert "'nope' is not registered" in reasons["bad2"]


def test_a_failed_attempt_waits_in_state_retry_within_its_backoff_ceiling(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a task that fails with ConnectionError on its first attempt, with backoff 2 s, whose
    # jitter draws the middle of its range (a draw of a few ms would make the retry due before the
    # drain below stops; the range itself is tested in test_retries.py)
    monkeypatch.setattr("conveyor.retries.random.uniform", lambda low, high: (low + high) / 2)

    @app.task(name="flaky", retries=2, backoff=2, retry_on=(ConnectionError,))
    def flaky() -> str:
        if current_context().attempt == 0:
            raise ConnectionError("first try")
        return "ok"

    r = flaky.delay()
    # When one attempt ran
    before = time.time()
    assert [o.state for o in drain(app, include_scheduled=False)] == ["RETRY"]
    # Then the task waits in the schedule in state RETRY, due within the backoff ceiling (full jitter: 0-2 s;
    # the middle draw, 1 s, leaves a loaded machine time to stop draining before the retry is due)
    assert r.state is State.RETRY
    assert depths(app) == (0, 1, 0, 0)
    info = r.info
    assert info is not None and info.eta is not None
    assert before <= info.eta <= time.time() + 2
    [error] = r.errors
    assert (error.type, error.attempt) == ("ConnectionError", 0)
    assert 'raise ConnectionError("first try")' in error.traceback
    # And once due, the retry runs and succeeds
    drain(app, timeout=5)
    assert r.get(timeout=1) == "ok"


def test_success_after_retries_keeps_every_failed_attempts_traceback(app: App) -> None:
    # Given a task that fails twice, each time differently, then succeeds
    @app.task(name="twice", retries=2, backoff=0.01)
    def twice() -> int:
        attempt = current_context().attempt
        if attempt < 2:
            raise (KeyError if attempt == 0 else ValueError)(f"attempt {attempt}")
        return attempt

    r = twice.delay()
    drain(app, timeout=5)
    # Then the result is the third attempt's, and both failures are kept with it, tracebacks included
    assert r.get(timeout=1) == 2
    assert [(e.type, e.attempt) for e in r.errors] == [("KeyError", 0), ("ValueError", 1)]
    assert all("raise (KeyError if attempt == 0 else ValueError)" in e.traceback for e in r.errors)


def test_ctx_retry_runs_the_task_again_after_its_countdown(app: App) -> None:
    # Given a task that asks for a retry in 1 s from inside, through its context
    @app.task(name="later", retries=1)
    def later() -> int:
        ctx = current_context()
        if ctx.attempt == 0:
            ctx.retry(countdown=1, reason="the report is not ready")
        return ctx.attempt

    sent = time.time()
    r = later.delay()
    drain(app, include_scheduled=False)
    # Then it waits in RETRY with the countdown as its delay, and its second attempt succeeds
    info = r.info
    assert info is not None and info.state is State.RETRY and info.eta is not None
    # (the eta is at least the countdown after the send; how long drain took does not matter)
    assert info.eta >= sent + 1
    drain(app, timeout=5)
    assert r.get(timeout=1) == 1


def test_exhausted_retries_go_to_dead_letters_and_requeue_runs_them_again(app: App) -> None:
    # Given a task that dead-letters on final failure, and a dependency that is down
    down = [True]

    @app.task(name="charge", retries=1, backoff=0.01, dead_letter_on_failure=True)
    def charge(amount: int) -> int:
        if down[0]:
            raise ConnectionError("payment service down")
        return amount

    r = charge.delay(42)
    drain(app, timeout=5)
    # Then after two attempts the task failed, with both tracebacks, and its message is a dead letter saying why
    assert r.state is State.FAILURE
    assert len(r.errors) == 2
    [dead] = app.broker.dead_letters()
    assert dead.id == r.id
    assert dead.reason == "failed after 2 attempt(s): ConnectionError: payment service down"
    # When the dependency is back and the dead letter is requeued
    down[0] = False
    assert app.broker.requeue_dead([r.id]) == 1
    drain(app, timeout=5)
    # Then it runs again and succeeds, and the dead-letter queue is empty
    assert r.get(timeout=1) == 42
    assert depths(app) == (0, 0, 0, 0)


def test_dead_letters_can_be_purged(app: App) -> None:
    # Given two tasks that failed into the dead-letter queue
    @app.task(name="broken", dead_letter_on_failure=True)
    def broken() -> None:
        raise RuntimeError("broken")

    broken.delay(), broken.delay()
    drain(app)
    assert depths(app) == (0, 0, 0, 2)
    # When they are purged, then none is left and nothing runs again
    assert app.broker.purge_dead() == 2
    assert depths(app) == (0, 0, 0, 0)
    assert drain(app) == []


def test_expired_task_is_recorded_revoked_with_the_reason(app: App) -> None:
    # Given a task that expires 0.1 s after it is sent, and no worker for 0.2 s
    ran: list[int] = []

    @app.task(name="quote", expires=0.1)
    def quote() -> None:
        ran.append(1)

    r = quote.delay()
    # (and one sent with an expiry already past as a call option, a point in time)
    past = quote.apply_async(expires=-1)  # a second ago
    time.sleep(0.2)  # the expiry is the point of the test: let it pass
    # When a worker picks them up
    outcomes = drain(app)
    # Then neither is run, both are REVOKED with the reason, and get() says so
    assert ([o.state for o in outcomes], ran) == (["REVOKED", "REVOKED"], [])
    assert past.state is State.REVOKED
    info = r.info
    assert info is not None and info.note == "expired before a worker picked it up"
    with pytest.raises(ResultMissing, match="expired before a worker picked it up"):
        r.get(timeout=1)
    assert depths(app) == (0, 0, 0, 0)


def test_revoking_a_queued_task_deletes_it_and_it_never_runs(app: App) -> None:
    # Given two queued tasks
    ran: list[str] = []

    @app.task(name="send")
    def send(tag: str) -> None:
        ran.append(tag)

    keep, drop = send.delay("keep"), send.delay("drop")
    # When one is revoked
    assert drop.revoke(reason="customer cancelled") is True
    drain(app)
    # Then only the other runs, and the revoked one reads REVOKED with the reason
    assert ran == ["keep"] and keep.state is State.SUCCESS
    with pytest.raises(ResultMissing, match="customer cancelled"):
        drop.get(timeout=1)


def test_a_revoked_task_is_not_run_again_after_its_worker_died(app: App) -> None:
    # Given a task taken by a worker process that then dies, and revoked meanwhile (too late to cancel)
    ran: list[int] = []

    @app.task(name="t")
    def t() -> None:
        ran.append(1)

    r = t.delay()
    app.broker.reserve([app.settings.default_queue], 1, owner="dead-child", lease=30)
    assert r.revoke() is False  # in flight: not cancelled
    app.broker.release_owner("dead-child")
    # When the message is delivered again
    [outcome] = drain(app)
    # Then it is not run: the revocation lives in the result backend, not in the dead worker
    assert (outcome.state, ran) == ("REVOKED", [])
    # (RabbitMQ's in-flight counts are kept by the workers and lag by up to a second: docs/amqp.md)
    wait_until(lambda: depths(app) == (0, 0, 0, 0), 5, "the queue to be empty")


def test_a_task_whose_final_result_landed_is_not_run_again_when_its_ack_was_lost(app: App) -> None:
    # Given a task whose worker recorded its final result, then died before the ack landed (on RabbitMQ
    # the supervisor's ack of a killed child's delivery is lost with the child's channel)
    ran: list[int] = []

    @app.task(name="t")
    def t() -> int:
        ran.append(1)
        return 2

    r = t.delay()
    [delivery] = app.broker.reserve([app.settings.default_queue], 1, owner="dead-child", lease=30)
    record = ResultRecord(state=State.SUCCESS, value=1, task="t")
    app.backend.set(r.id, State.SUCCESS, encode_record(record), app.settings.result_ttl)
    app.broker.release_owner("dead-child", [delivery.id])
    # When the message is delivered again
    [outcome] = drain(app)
    # Then it is not run again, and its final result stays the one recorded: a final state stays final
    assert (outcome.state, ran) == ("DUPLICATE", [])
    assert (r.state, r.get(timeout=1)) == (State.SUCCESS, 1)
    wait_until(lambda: depths(app) == (0, 0, 0, 0), 5, "the queue to be empty")


def test_soft_time_limit_not_caught_fails_the_task_with_time_limit_exceeded(app: App) -> None:
    # Given a task that sleeps past its 0.2 s soft limit without catching it
    @app.task(name="slow", soft_time_limit=0.2)
    def slow() -> None:
        time.sleep(5)

    r = slow.delay()
    drain(app)
    # Then it failed with TimeLimitExceeded, its traceback kept, and nothing is left in the broker
    with pytest.raises(TaskFailed, match=r"TimeLimitExceeded: task exceeded its soft time limit of 0\.2s") as info:
        r.get(timeout=1)
    assert "time.sleep(5)" in info.value.traceback
    assert depths(app) == (0, 0, 0, 0)


def test_a_message_over_the_size_limit_fails_at_delay_and_nothing_is_sent(app: App) -> None:
    # Given a 2 KiB message size limit
    @app.task(name="upload")
    def upload(data: str) -> None: ...

    # When a task is sent with 4 KiB of data, then delay() raises a clear error and the broker holds nothing
    with pytest.raises(MessageTooLarge, match=r"over the limit of 2048 bytes \(max_message_size\)"):
        upload.delay("x" * 4096)
    assert depths(app) == (0, 0, 0, 0)
    # And a message under the limit goes through
    upload.delay("x" * 100)
    assert depths(app) == (1, 0, 0, 0)


def test_revoking_a_task_waiting_for_its_retry_stops_the_retries(app: App) -> None:
    # Given a task whose first attempt failed and which waits 1 s for its retry
    ran: list[int] = []

    @app.task(name="again", retries=3)
    def again() -> None:
        ran.append(current_context().attempt)
        current_context().retry(countdown=1, reason="down")

    r = again.delay()
    drain(app, include_scheduled=False)
    assert (r.state, ran) == (State.RETRY, [0])
    # When it is revoked while it waits
    assert r.revoke(reason="gave up") is True
    drain(app, timeout=5)
    # Then the retry never runs, and the task stays REVOKED
    assert ran == [0]
    assert r.state is State.REVOKED
    assert depths(app) == (0, 0, 0, 0)
