"""The revocation rule of ``ResultBackend.set`` (issue 14, friction 10), over every backend kind.

A revocation and a finished run do not replace each other: a live REVOKED record is replaced only by
another REVOKED one, and a REVOKED write leaves SUCCESS and FAILURE alone. Checked on the server in
one step, so a task that finishes while it is being revoked ends in exactly one of the two states.
"""

from __future__ import annotations

import threading
import time

import pytest

from conveyor.backends import ResultBackend
from conveyor.backends.base import replaces
from conveyor.states import State


def record(state: State) -> bytes:
    return f'{{"state":"{state}"}}'.encode()


@pytest.mark.parametrize("state", [State.PENDING, State.STARTED, State.RETRY, State.SUCCESS, State.FAILURE])
def test_nothing_but_a_revocation_replaces_a_revocation(backend: ResultBackend, state: State) -> None:
    backend.set("t", State.REVOKED, record(State.REVOKED), ttl=60)
    backend.set("t", state, record(state), ttl=60)
    backend.set_many([("t", state, record(state))], ttl=60)
    assert not backend.try_set("t", state, record(state), ttl=60)
    assert backend.get("t") == record(State.REVOKED)
    assert backend.try_set("t", State.REVOKED, b'{"state":"REVOKED","terminate":true}', ttl=60)
    assert backend.get("t") == b'{"state":"REVOKED","terminate":true}'


@pytest.mark.parametrize("state", [State.SUCCESS, State.FAILURE])
def test_a_revocation_does_not_replace_a_finished_run(backend: ResultBackend, state: State) -> None:
    backend.set("t", state, record(state), ttl=60)
    assert not backend.try_set("t", State.REVOKED, record(State.REVOKED), ttl=60)
    backend.set("t", State.REVOKED, record(State.REVOKED), ttl=60)
    assert backend.get("t") == record(state)


@pytest.mark.parametrize("state", [State.STARTED, State.RETRY])
def test_a_revocation_replaces_a_task_that_has_not_finished(backend: ResultBackend, state: State) -> None:
    backend.set("t", state, record(state), ttl=60)
    assert backend.try_set("t", State.REVOKED, record(State.REVOKED), ttl=60)
    assert backend.wait("t", timeout=1) == record(State.REVOKED)  # final: it wakes waiters


def test_finished_records_are_replaced_by_a_new_run_and_forget_clears_a_revocation(backend: ResultBackend) -> None:
    backend.set("t", State.FAILURE, record(State.FAILURE), ttl=60)
    assert backend.try_set("t", State.STARTED, record(State.STARTED), ttl=60)  # dlq requeue runs it again
    backend.set("r", State.REVOKED, record(State.REVOKED), ttl=60)
    backend.forget("r")
    assert backend.try_set("r", State.STARTED, record(State.STARTED), ttl=60)


def test_an_expired_revocation_no_longer_holds(backend: ResultBackend) -> None:
    backend.set("t", State.REVOKED, record(State.REVOKED), ttl=0.05)
    time.sleep(0.15)
    assert backend.try_set("t", State.SUCCESS, record(State.SUCCESS), ttl=60)
    assert backend.get("t") == record(State.SUCCESS)


def test_a_race_between_finishing_and_revoking_ends_in_one_of_them(backend: ResultBackend) -> None:
    for attempt in range(20):
        task_id = f"race-{attempt}"
        backend.set(task_id, State.STARTED, record(State.STARTED), ttl=60)
        outcome: dict[str, bool] = {}

        def write(state: State, task_id: str = task_id, outcome: dict[str, bool] = outcome) -> None:
            outcome[state] = backend.try_set(task_id, state, record(state), 60)

        threads = [threading.Thread(target=write, args=(s,)) for s in (State.SUCCESS, State.REVOKED)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
        assert sorted(outcome.values()) == [False, True]
        winner = State.SUCCESS if outcome[State.SUCCESS] else State.REVOKED
        assert backend.get(task_id) == record(winner)


def test_the_rule_as_a_pure_function() -> None:
    assert replaces(State.SUCCESS, None) and replaces(State.REVOKED, None)
    assert not replaces(State.SUCCESS, State.REVOKED) and replaces(State.REVOKED, State.REVOKED)
    assert not replaces(State.REVOKED, State.SUCCESS) and replaces(State.REVOKED, State.STARTED)
    assert replaces(State.STARTED, State.SUCCESS)
