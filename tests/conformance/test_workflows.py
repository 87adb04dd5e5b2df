"""Chains, groups, chords and nesting over every broker kind (with its paired result backend), run by drain().

drain() runs the same executor and middleware as a worker, in this thread; tests/e2e/test_workflows.py
runs chords on real worker processes, with a kill -9.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from conveyor import App, Task, TaskFailed, chain, chord, group
from conveyor.errors import ResultMissing
from conveyor.message import Message
from conveyor.states import State
from conveyor.testing import drain
from conveyor.worker.events import Ended


@pytest.fixture
def app(broker_url: str, backend_url: str) -> Iterator[App]:
    instance = App("wf", broker=broker_url, backend=backend_url)
    yield instance
    instance.close()


class Boom(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class Tasks:
    add: Task[[int, int], int]
    total: Task[[list[int]], int]
    listed: Task[[list[Any]], list[Any]]
    fail: Task[[int], int]
    on_error: Task[[str], str]


def tasks(app: App) -> Tasks:
    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    @app.task
    def total(xs: list[int]) -> int:
        return sum(xs)

    @app.task
    def listed(xs: list[Any]) -> list[Any]:
        return xs

    @app.task
    def fail(x: int) -> int:
        raise Boom(f"member {x} broke")

    @app.task
    def on_error(task_id: str) -> str:
        return task_id

    return Tasks(add, total, listed, fail, on_error)


def test_chain_group_chord_and_nesting(app: App) -> None:
    t = tasks(app)
    add, total, listed = t.add, t.total, t.listed
    # Given a chain, a group, a chord and nested pieces, all sent before any worker runs
    a_chain = chain(add.s(1, 2), add.s(10), add.s(100)).apply_async()
    piped = (add.s(1, 1) | add.s(1)).apply_async()
    a_group = group(add.s(i, i) for i in range(6)).apply_async()
    a_chord = chord([add.s(i, 1) for i in range(6)], total.s()).apply_async()
    group_in_chain = (add.s(1, 1) | group(add.s(1), add.s(2)) | total.s()).apply_async()
    chord_in_chain = chain(
        add.s(2, 2),
        chord([add.s(1), add.s(2)], total.s()),
        add.s(1000),
    ).apply_async()
    chain_in_group = group(chain(add.s(1, 1), add.s(1)), add.s(5, 5)).apply_async()
    group_in_chord = chord([group(add.s(1, 1), add.s(2, 2)), add.s(3, 3)], listed.s()).apply_async()
    immutable = chain(add.s(1, 1), add.si(5, 5)).apply_async()
    linked = add.apply_async((1, 2), link=add.s(5))
    drain(app, timeout=30)
    # Then every result is there, in order
    assert a_chain.get(timeout=5) == 113
    assert piped.get(timeout=5) == 3
    assert a_group.get(timeout=5) == [0, 2, 4, 6, 8, 10]
    assert a_group.completed_count() == 6 and a_group.ready() and not a_group.failed()
    assert [r.get(timeout=5) for r in a_group.results] == [0, 2, 4, 6, 8, 10]
    assert app.group_result(a_group.id).get(timeout=5) == [0, 2, 4, 6, 8, 10]
    assert a_chord.get(timeout=5) == 21
    assert group_in_chain.get(timeout=5) == 7
    assert chord_in_chain.get(timeout=5) == 1000 + 5 + 6
    assert chain_in_group.get(timeout=5) == [3, 10]
    assert group_in_chord.get(timeout=5) == [[2, 4], 6]
    assert immutable.get(timeout=5) == 10
    assert linked.get(timeout=5) == 3
    with pytest.raises(ResultMissing):
        app.group_result("no-such-group")


def test_a_failure_stops_a_chain_and_fails_a_chord_naming_the_member(app: App) -> None:
    t = tasks(app)
    add, total, fail, on_error = t.add, t.total, t.fail, t.on_error
    # Given a chain whose middle step fails, and a chord with one failing member and an errback on its body
    broken_chain = chain(add.s(1, 1), fail.s(), add.s(1)).apply_async()
    errback = on_error.s().set(task_id="errback-of-body")
    broken_chord = chord([add.s(1, 1), fail.s(7), add.s(2, 2)], total.s().set(link_error=errback)).apply_async()
    a_group = group(add.s(1, 1), fail.s(8)).apply_async()
    outcomes = drain(app, timeout=30)
    # Then the chain's .get() raises the failing step's own exception type; its last step never ran
    with pytest.raises(Boom, match="member 2 broke"):
        broken_chain.get(timeout=5)
    assert broken_chain.state is State.FAILURE
    # And the chord fails with an error naming the member; the body never ran; its errback did
    with pytest.raises(Boom, match=r"chord member .*fail\[.*\] failed: member 7 broke") as caught:
        broken_chord.get(timeout=5)
    assert isinstance(caught.value, TaskFailed)
    assert not any(o.task.endswith("total") for o in outcomes)
    failed_member = app.result("errback-of-body").get(timeout=5)
    assert app.result(failed_member).state is State.FAILURE
    # And a group reports its failed member
    assert a_group.failed() and a_group.completed_count() == 1 and a_group.ready()
    with pytest.raises(Boom):
        a_group.get(timeout=5)
    assert a_group.get(timeout=5, propagate=False) == [2, None]


def test_a_chord_member_run_twice_counts_once_and_the_body_runs_once(app: App) -> None:
    t = tasks(app)
    add, listed = t.add, t.listed
    sent: list[Message] = []
    send = app.send

    def recording(messages: Sequence[Message]) -> list[str]:
        sent.extend(messages)
        return send(messages)

    app.send = recording  # type: ignore[method-assign]
    # Given a chord that ran to its body
    result = chord([add.s(i, 0) for i in range(4)], listed.s()).apply_async()
    first = drain(app, timeout=30)
    assert [o.ended for o in first if o.task.endswith("listed")] == [Ended.SUCCESS]
    # When two members run again (copies sent once more, as after a crash between result and ack)
    app.send(sent[:2])
    again = drain(app, timeout=30)
    # Then they ran, and the body they sent again was dropped unrun: it ran once, with every result in order
    assert [o.ended for o in again if o.task.endswith("add")] == [Ended.SUCCESS, Ended.SUCCESS]
    assert [o.ended for o in again if o.task.endswith("listed")] == [Ended.DUPLICATE]
    assert result.get(timeout=5) == [0, 1, 2, 3]
