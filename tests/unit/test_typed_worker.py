"""The worker's side of typed arguments, in this process on the memory broker (conveyor.testing.drain)."""

from __future__ import annotations

import datetime
from collections.abc import Iterator

import pytest

from conveyor import App
from conveyor.errors import EncodeError, TaskFailed
from conveyor.middleware import Job, Middleware
from conveyor.testing import drain


class Seen(Middleware):
    """Records the arguments middleware see in before_run."""

    def __init__(self) -> None:
        self.args: list[object] = []

    def before_run(self, job: Job) -> None:
        self.args.append(job.args[0])


@pytest.fixture
def app() -> Iterator[App]:
    instance = App("typed-unit", broker="memory://")
    yield instance
    instance.close()


def test_arguments_that_do_not_convert_fail_the_task_and_keep_the_message_as_a_dead_letter(app: App) -> None:
    @app.task(retries=3)
    def shift(day: datetime.date) -> datetime.date:
        return day

    # Given a message sent past delay()'s check (the batch path does not check)
    [task_id] = app.send([shift.message(["not a date"])])
    # When a worker takes it
    drain(app)
    # Then the task failed at once (no retry: it would fail so again) naming the parameter
    with pytest.raises(TaskFailed, match=r"argument 'day' does not convert to date") as info:
        app.result(task_id).get(timeout=1)
    assert info.value.type_name == "conveyor.errors.DecodeError"
    assert app.result(task_id).info is not None and app.result(task_id).info.attempt == 0  # type: ignore[union-attr]
    # And the message waits in the dead-letter queue, to requeue once fixed
    [dead] = app.broker.dead_letters()
    assert dead.id == task_id and "argument 'day'" in dead.reason


def test_middleware_see_the_converted_arguments_and_results_convert_for_app_result(app: App) -> None:
    seen = Seen()
    app.add_middleware(seen)

    @app.task
    def next_day(day: datetime.date) -> datetime.date:
        return day + datetime.timedelta(days=1)

    r = next_day.delay(datetime.date(2024, 12, 31))
    drain(app)
    assert seen.args == [datetime.date(2024, 12, 31)]
    assert r.get(timeout=1) == datetime.date(2025, 1, 1)
    assert app.result(r.id).result == datetime.date(2025, 1, 1)  # a handle by id converts too


def test_a_result_that_would_not_convert_back_fails_the_task_in_the_worker(app: App) -> None:
    @app.task
    def when() -> datetime.datetime:
        return "soon"  # type: ignore[return-value]

    r = when.delay()
    drain(app)
    with pytest.raises(TaskFailed, match=r"returned str 'soon', which does not convert to datetime") as info:
        r.get(timeout=1)
    assert info.value.type_name == "conveyor.errors.EncodeError"


def test_a_periodic_entry_with_an_argument_that_would_not_arrive_as_given_is_refused_when_declared(app: App) -> None:
    @app.task
    def report(day: datetime.date) -> None: ...

    with pytest.raises(EncodeError, match=r"argument 'day' is str 'today'"):
        app.add_periodic(report.s("today"), every=datetime.timedelta(minutes=5))  # type: ignore[call-overload]
    app.add_periodic(report.s(datetime.date(2024, 1, 1)), every=datetime.timedelta(minutes=5))
