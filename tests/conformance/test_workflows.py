"""Chains, groups, chords and nesting over every broker kind (with its paired result backend), run by drain().

drain() runs the same executor and middleware as a worker, in this thread; tests/e2e/test_workflows.py
runs chords on real worker processes, with a kill -9.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import redis

from conveyor import App, Task, TaskFailed, chain, chord, group
from conveyor.backends.memory import MemoryResultBackend
from conveyor.backends.postgres import PostgresResultBackend
from conveyor.backends.redis import RedisResultBackend
from conveyor.backends.sqlite import SQLiteResultBackend
from conveyor.brokers.amqp.broker import AMQPBroker
from conveyor.errors import ResultMissing
from conveyor.message import Message
from conveyor.states import State
from conveyor.testing import drain
from conveyor.worker.events import Ended
from tests.conftest import REDIS_URL


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
    assert app.result(str(failed_member)).state is State.FAILURE
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

    def recording(messages: Sequence[Message], *, connection: object | None = None) -> list[str]:
        sent.extend(messages)
        return send(messages, connection=connection)

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


def test_nothing_of_a_workflow_outlives_result_ttl(broker_url: str, backend_url: str, broker_kind: str) -> None:
    # Given an app keeping results 1 s, a chord with a member that fails, one revoked before it ran and one
    # dead-lettered, a group, and a chain
    app = App("wf-ttl", broker=broker_url, backend=backend_url, result_ttl=1.0)
    t = tasks(app)

    @app.task(dead_letter_on_failure=True)
    def buried(x: int) -> int:
        raise Boom(str(x))

    try:
        member = t.add.s(1, 1).set(task_id="revoked-member")
        failing = chord([t.add.s(1, 1), t.fail.s(1), member, buried.s(2)], t.total.s()).apply_async()
        app.result("revoked-member").revoke()
        other = chord([t.add.s(1, 1), buried.s(3)], t.total.s()).apply_async()
        fine = chord([t.add.s(i, i) for i in range(3)], t.total.s()).apply_async()
        a_group = group(t.add.s(1, 1), t.add.s(2, 2)).apply_async()
        a_chain = chain(t.add.s(1, 1), t.add.s(1)).apply_async()
        drain(app, timeout=30)
        assert fine.get(timeout=5) == 6 and a_chain.get(timeout=5) == 3 and a_group.get(timeout=5) == [2, 4]
        for broken in (failing, other):
            with pytest.raises(TaskFailed):
                broken.get(timeout=5)
        # When result_ttl has passed
        time.sleep(1.3)
        # Then the backend holds nothing of them: no result, gather, claim or value is left. (The AMQP broker
        # keeps state of its own there, under its prefix: worker in-flight counts, and its records of explicit
        # task ids, "id-holder" and "landed", kept 7 days: docs/amqp.md.)
        left = live_backend_entries(app, broker_kind)
        if isinstance(app.broker, AMQPBroker):
            left = [k for k in left if not k.startswith(f"kv:{app.broker.prefix}:")]
        assert left == []
    finally:
        app.close()


def live_backend_entries(app: App, broker_kind: str) -> list[str]:
    """What the result backend still holds (unexpired): keys on Redis, rows on SQLite or PostgreSQL, memory entries."""
    backend: Any = app.backend
    now = time.time()
    if isinstance(backend, RedisResultBackend):
        client = redis.Redis.from_url(REDIS_URL)
        try:
            keys = [k.decode() for k in client.scan_iter(match=f"{{{backend.prefix}:*", count=1000)]
        finally:
            client.close()
        # The broker's own queue structures live beside them ({prefix:q:NAME}), the event log, which keeps its
        # own window (events_ttl, docs/observability.md), and the metrics counters, which only grow (the
        # dashboard's task series); results and bookkeeping must be gone
        own = (f"{{{backend.prefix}:q:", f"{{{backend.prefix}:events}}", f"{{{backend.prefix}:counts:")
        return sorted(k for k in keys if not k.startswith(own))
    if isinstance(backend, SQLiteResultBackend):
        conn = sqlite3.connect(backend.db.path)
        try:
            found = []
            for table, key in (("results", "id"), ("gathers", "key"), ("claims", "key"), ("kv", "key")):
                rows = conn.execute(f"SELECT {key} FROM {table} WHERE expires_at > ?", (now,)).fetchall()
                found += [f"{table}:{row[0]}" for row in rows]
            return found
        finally:
            conn.close()
    if isinstance(backend, PostgresResultBackend):
        with backend.db.connection() as pg:
            found = []
            for table, key in (("results", "id"), ("gathers", "key"), ("claims", "key"), ("kv", "key")):
                query = f"SELECT {key} FROM {backend.db.schema}.{table} WHERE expires_at > {backend.db.schema}.cv_now()"
                found += [f"{table}:{row[0]}" for row in pg.execute(query).fetchall()]
            return found
    assert isinstance(backend, MemoryResultBackend), backend
    held = [f"result:{k}" for k, v in backend._data.items() if v[2] > now]
    held += [f"gather:{k}" for k, v in backend._gathers.items() if v[1] > now]
    held += [f"claim:{k}" for k, v in backend._claims.items() if v > now]
    held += [f"value:{k}" for k, v in backend._values.items() if v[1] > now]
    return held


def test_two_producers_sending_one_key_at_once_get_one_task(broker_url: str, backend_url: str) -> None:
    # Given two producers (apps of their own, on the same broker and backend)
    apps = [App(f"producer-{n}", broker=broker_url, backend=backend_url) for n in range(2)]
    try:
        senders = [tasks(a).add for a in apps]
        if broker_url == "memory://":  # one process's memory broker: one app stands for both producers
            senders = [senders[0], senders[0]]
        barrier = threading.Barrier(8)
        ids: list[str] = []
        lock = threading.Lock()

        def send(n: int) -> None:
            barrier.wait(timeout=10)
            result = senders[n % 2].apply_async((1, 2), key="receipt-42")
            with lock:
                ids.append(result.id)

        # When 8 threads of the two send the same key= at the same moment
        threads = [threading.Thread(target=send, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        # Then every call got the one task's id, and the broker holds one message
        assert len(ids) == 8 and len(set(ids)) == 1
        assert sum(s.ready for s in apps[0].broker.stats()) == 1
    finally:
        for a in apps:
            a.close()
