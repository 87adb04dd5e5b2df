"""The broker contract (brokers/base.py), run unchanged over every broker kind.

Each test reads Given / When / Then. Durations are short (leases of a fraction of a second) and
every wait is bounded.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from conveyor.brokers import Broker, Delivery, Envelope
from conveyor.brokers.base import REQUEUES_PER_DELIVERY
from tests.conftest import wait_until

OWNER = "worker-a"


def env(queue: str = "default", body: bytes = b"x", **kw: object) -> Envelope:
    return Envelope(id=uuid.uuid4().hex, queue=queue, body=body, **kw)  # type: ignore[arg-type]


def stats_of(broker: Broker, queue: str = "default") -> tuple[int, int, int, int]:
    for s in broker.stats():
        if s.queue == queue:
            return s.ready, s.scheduled, s.in_flight, s.dead
    return 0, 0, 0, 0


def test_enqueued_message_is_reserved_once_with_its_body(broker: Broker) -> None:
    # Given one enqueued message
    e = env(body=b'{"hello": 1}')
    assert broker.enqueue([e]) == [e.id]
    # When two owners reserve
    first = broker.reserve(["default"], 10, owner=OWNER, lease=5)
    second = broker.reserve(["default"], 10, owner="worker-b", lease=5)
    # Then only the first gets it, intact, on its first delivery
    assert [(d.id, d.body, d.deliveries, d.owner, d.queue) for d in first] == [(e.id, e.body, 1, OWNER, "default")]
    assert second == []
    assert stats_of(broker) == (0, 0, 1, 0)


def test_priority_first_then_fifo(broker: Broker) -> None:
    # Given messages of mixed priority, enqueued in this order
    es = [env(priority=p, body=str(i).encode()) for i, p in enumerate([0, 5, 9, 5, 0, 9])]
    broker.enqueue(es)
    # When all are reserved
    got = broker.reserve(["default"], 10, owner=OWNER, lease=5)
    # Then higher priorities come first, and within a priority the oldest first
    assert [d.body for d in got] == [b"2", b"5", b"1", b"3", b"0", b"4"]


def test_queues_are_served_in_declared_order(broker: Broker) -> None:
    broker.enqueue([env("low", b"l1"), env("high", b"h1"), env("low", b"l2")])
    got = broker.reserve(["high", "low"], 2, owner=OWNER, lease=5)
    assert [d.body for d in got] == [b"h1", b"l1"]
    assert [d.queue for d in got] == ["high", "low"]


def test_reserve_takes_at_most_n(broker: Broker) -> None:
    broker.enqueue([env() for _ in range(5)])
    assert len(broker.reserve(["default"], 2, owner=OWNER, lease=5)) == 2
    assert len(broker.reserve(["default"], 10, owner=OWNER, lease=5)) == 3


def test_batch_enqueue_of_many(broker: Broker) -> None:
    broker.enqueue([env(body=str(i).encode()) for i in range(1000)])
    assert stats_of(broker) == (1000, 0, 0, 0)
    got = broker.reserve(["default"], 1000, owner=OWNER, lease=5)
    assert [d.body for d in got] == [str(i).encode() for i in range(1000)]


def test_future_eta_waits_in_the_schedule(broker: Broker) -> None:
    # Given a message due in 1 s (sent on a connection opened before: a first call can take that long on a
    # loaded machine; stats() on RabbitMQ's quorum queues took over 0.4 s there)
    broker.stats()
    due = time.time() + 1.0
    broker.enqueue([env(eta=due)])
    # Then it is scheduled, not ready, and not reservable yet
    assert_not_yet(broker, due)
    # When its time comes, it is reserved, never before
    assert len(reserve_when_due(broker)) == 1
    assert time.time() >= due


def test_past_eta_is_ready_at_once(broker: Broker) -> None:
    broker.enqueue([env(eta=time.time() - 10)])
    assert len(broker.reserve(["default"], 1, owner=OWNER, lease=5)) == 1


def test_ack_removes_the_message(broker: Broker) -> None:
    broker.enqueue([env(), env()])
    got = broker.reserve(["default"], 2, owner=OWNER, lease=5)
    broker.ack(got)
    assert stats_of(broker) == (0, 0, 0, 0)
    assert broker.reserve(["default"], 2, owner=OWNER, lease=5) == []


def test_ack_and_reserve_acks_first_then_reserves(broker: Broker) -> None:
    # Given two messages reserved, and two more waiting in two queues
    broker.enqueue([env(body=b"a"), env(body=b"b")])
    done = broker.reserve(["default"], 2, owner=OWNER, lease=5)
    broker.enqueue([env(body=b"c"), env("other", b"d")])
    # When the finished pair is acked and the next batch reserved in one call
    got = broker.ack_and_reserve(done, ["default", "other"], 5, owner=OWNER, lease=5)
    # Then the acked messages are gone and the waiting ones are leased, queues in order
    assert [d.body for d in got] == [b"c", b"d"]
    assert stats_of(broker) == (0, 0, 1, 0)
    assert stats_of(broker, "other") == (0, 0, 1, 0)
    # And with nothing left, it still acks, then waits no longer than its timeout
    started = time.monotonic()
    assert broker.ack_and_reserve(got, ["default", "other"], 5, owner=OWNER, lease=5, timeout=0.2) == []
    assert time.monotonic() - started < 2.0
    assert stats_of(broker) == stats_of(broker, "other") == (0, 0, 0, 0)


def test_nack_returns_it_without_counting_the_delivery(broker: Broker) -> None:
    broker.enqueue([env()])
    [d] = broker.reserve(["default"], 1, owner=OWNER, lease=5)
    broker.nack(d)
    [again] = broker.reserve(["default"], 1, owner=OWNER, lease=5)
    assert again.id == d.id
    assert again.deliveries == 1
    assert again.token != d.token


def test_give_back_returns_reserved_messages_uncounted(broker: Broker) -> None:
    # Given three reserved messages, one of which its owner acked
    broker.enqueue([env(body=str(i).encode()) for i in range(3)])
    taken = broker.reserve(["default"], 3, owner=OWNER, lease=5)
    broker.ack(taken[:1])
    # When the worker gives the three back in one call (the acked one's lease is gone: ignored)
    broker.give_back(taken)
    # Then the two unacked ones are ready again, their delivery not counted, and nothing else is
    again = broker.reserve(["default"], 3, owner=OWNER, lease=5)
    assert sorted(d.body for d in again) == [b"1", b"2"]
    assert [d.deliveries for d in again] == [1, 1]
    assert stats_of(broker) == (0, 0, 2, 0)
    broker.ack(again)


def test_nack_with_delay_schedules_it_with_the_new_body(broker: Broker) -> None:
    broker.enqueue([env(body=b"attempt-0")])
    [d] = broker.reserve(["default"], 1, owner=OWNER, lease=5)
    due = time.time() + 1.0
    broker.nack(d, delay=1.0, body=b"attempt-1")
    assert_not_yet(broker, due)
    [again] = reserve_when_due(broker)
    assert time.time() >= due
    assert again.body == b"attempt-1"


def assert_not_yet(broker: Broker, due: float) -> None:
    """The one message on "default" is scheduled and not reservable: checks that mean something only before ``due``.

    On a loaded machine a check can end after the message fell due (RabbitMQ then moves it to ready on
    its own): what it saw proves nothing either way then, so it is not asserted; the test goes on to
    check that the message is reserved, and never before its time.
    """
    counts = stats_of(broker)
    early = broker.reserve(["default"], 1, owner=OWNER, lease=5)
    if time.time() >= due:
        if early:
            broker.nack(early[0])  # back to the queue, for the caller's reserve_when_due
        return
    assert counts == (0, 1, 0, 0)
    assert early == []


def reserve_when_due(broker: Broker, timeout: float = 10) -> list[Delivery]:
    """Reserve the one message on "default", waiting up to ``timeout`` seconds for it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = broker.reserve(["default"], 1, owner=OWNER, lease=5, timeout=0.2)
        if got:
            return got
    raise AssertionError(f"the message was not reserved within {timeout}s")


def seen_running(broker: Broker, broker_kind: str, delivery: Delivery, lease: float) -> None:
    """One heartbeat reporting ``delivery`` running (then its owner dies: no more heartbeats).

    Not on AMQP: it ignores ``running`` and, once a process heartbeats, expires a lease only after
    heartbeats that skip it (a process stalled whole expires nothing); the held copy counts there anyway.
    """
    if broker_kind != "amqp":
        assert broker.extend([delivery], lease, running=[delivery.id]) == []


def test_expired_lease_is_redelivered_and_counted(broker: Broker, broker_kind: str) -> None:
    # Given a message leased for 0.3 s whose owner heartbeats it running once, then never again
    broker.enqueue([env()])
    [d] = broker.reserve(["default"], 1, owner=OWNER, lease=0.3)
    seen_running(broker, broker_kind, d, 0.3)
    assert broker.reserve(["default"], 1, owner="worker-b", lease=5) == []
    # When the lease expires
    time.sleep(0.4)
    # Then another owner gets it, as its second delivery
    [again] = broker.reserve(["default"], 1, owner="worker-b", lease=5)
    assert (again.id, again.deliveries, again.owner) == (d.id, 2, "worker-b")


def test_stale_ack_and_extend_are_ignored(broker: Broker) -> None:
    # Given a message whose first lease expired and was taken by worker-b
    broker.enqueue([env()])
    [old] = broker.reserve(["default"], 1, owner=OWNER, lease=0.2)
    time.sleep(0.3)
    [new] = broker.reserve(["default"], 1, owner="worker-b", lease=5)
    # When the first owner acks and heartbeats late
    broker.ack([old])
    lost = broker.extend([old], 5)
    # Then nothing changes for worker-b, and the first owner learns its lease is lost
    assert lost == [old.id]
    assert stats_of(broker) == (0, 0, 1, 0)
    assert broker.extend([new], 5) == []
    broker.ack([new])
    assert stats_of(broker) == (0, 0, 0, 0)


def test_heartbeat_keeps_a_long_task_leased(broker: Broker) -> None:
    # Given a 0.3 s lease heartbeated every 0.1 s for 0.8 s
    broker.enqueue([env()])
    [d] = broker.reserve(["default"], 1, owner=OWNER, lease=0.3)
    for _ in range(8):
        time.sleep(0.1)
        assert broker.extend([d], 0.3) == []
        # Then no other owner can take it meanwhile
        assert broker.reserve(["default"], 1, owner="worker-b", lease=5) == []
    broker.ack([d])


def test_poison_message_goes_to_dead_letters(broker: Broker, broker_kind: str) -> None:
    # Given max_deliveries=3 (the fixture) and an owner that dies with it running three times
    broker.enqueue([env(body=b"poison")])
    for attempt in range(1, 4):
        [d] = broker.reserve(["default"], 1, owner=f"w{attempt}", lease=0.1)
        assert d.deliveries == attempt
        seen_running(broker, broker_kind, d, 0.1)
        time.sleep(0.15)
    # When it would be delivered a fourth time
    assert broker.reserve(["default"], 1, owner="w4", lease=5) == []
    # Then it is dead, with a reason
    [dead] = broker.dead_letters()
    assert dead.body == b"poison"
    assert "3 times" in dead.reason
    assert stats_of(broker) == (0, 0, 0, 1)


def expire_all(broker: Broker, lease: float) -> None:
    """Let leases of ``lease`` seconds run out, then recover them (as a reserve would)."""
    time.sleep(lease + 0.05)
    broker.recover()


def test_expired_lease_of_a_message_never_seen_running_goes_back_uncounted(broker: Broker, broker_kind: str) -> None:
    if broker_kind == "amqp":
        pytest.skip("RabbitMQ counts a requeued copy by its STARTED result record, not by extend's running")
    # Given max_deliveries=3 and a message ahead of another, whose owners all die (a whole worker
    # killed) before any heartbeat saw it running
    first, second = env(body=b"innocent"), env(body=b"next")
    broker.enqueue([first, second])
    bound = REQUEUES_PER_DELIVERY * 3
    for _ in range(bound - 1):
        [d] = broker.reserve(["default"], 1, owner="whole-worker", lease=0.05)
        # Then every delivery is its first (the expired ones were not counted), and it keeps its place
        assert (d.id, d.deliveries) == (first.id, 1)
        expire_all(broker, 0.05)
    # ... and it is not dead, long after max_deliveries expiries
    assert stats_of(broker) == (2, 0, 0, 0)
    # When its lease expires unseen the REQUEUES_PER_DELIVERY x max_deliveries-th time
    [d] = broker.reserve(["default"], 1, owner="whole-worker", lease=0.05)
    expire_all(broker, 0.05)
    # Then it is buried (a task that kills its worker before the first heartbeat ends dead, bounded)
    [dead] = broker.dead_letters()
    assert dead.id == first.id and f"expired {bound} times" in dead.reason and "poison?" in dead.reason
    [after] = broker.reserve(["default"], 5, owner=OWNER, lease=5)
    assert (after.id, after.deliveries) == (second.id, 1)


def test_expired_lease_counts_a_delivery_only_against_what_a_heartbeat_saw_running(
    broker: Broker, broker_kind: str
) -> None:
    if broker_kind == "amqp":
        pytest.skip("RabbitMQ counts a requeued copy by its STARTED result record, not by extend's running")
    # Given max_deliveries=3 and a worker holding a poison task (running) and its prefetched batch-mate
    broker.enqueue([env(body=b"poison"), env(body=b"mate")])
    for attempt in range(1, 4):
        held = broker.reserve(["default"], 2, owner=f"w{attempt}", lease=0.1)
        assert [(d.body, d.deliveries) for d in held] == [(b"poison", attempt), (b"mate", 1)]
        # When its heartbeat reports the poison running, then the whole worker dies, three times
        assert broker.extend(held, 0.1, running=[held[0].id]) == []
        expire_all(broker, 0.1)
    # Then only the poison is dead, after max_deliveries; the batch-mate waits uncounted
    [dead] = broker.dead_letters()
    assert dead.body == b"poison" and "3 times" in dead.reason
    [mate] = broker.reserve(["default"], 5, owner=OWNER, lease=5)
    assert (mate.body, mate.deliveries) == (b"mate", 1)


def test_started_mark_lasts_one_delivery(broker: Broker, broker_kind: str) -> None:
    if broker_kind == "amqp":
        pytest.skip("RabbitMQ counts a requeued copy by its STARTED result record, not by extend's running")
    # Given a message seen running in its first delivery, whose lease expired (counted)
    broker.enqueue([env()])
    [d] = broker.reserve(["default"], 1, owner="w1", lease=0.1)
    broker.extend([d], 0.1, running=[d.id])
    expire_all(broker, 0.1)
    # When its second delivery expires without being seen running
    [d] = broker.reserve(["default"], 1, owner="w2", lease=0.1)
    assert d.deliveries == 2
    broker.extend([d], 0.1)
    expire_all(broker, 0.1)
    # Then that one is not counted: the mark belonged to the first delivery
    [d] = broker.reserve(["default"], 1, owner="w3", lease=5)
    assert d.deliveries == 2


def test_release_owner_returns_its_messages_at_once(broker: Broker) -> None:
    broker.enqueue([env(), env(), env()])
    mine = broker.reserve(["default"], 2, owner="child-1", lease=60)
    broker.reserve(["default"], 1, owner="child-2", lease=60)
    assert broker.release_owner("child-1") == 2
    again = broker.reserve(["default"], 5, owner="child-3", lease=60)
    assert sorted(d.id for d in again) == sorted(d.id for d in mine)
    assert all(d.deliveries == 2 for d in again)


def test_release_owner_counts_a_delivery_only_against_what_was_running(broker: Broker, broker_kind: str) -> None:
    if broker_kind == "amqp":
        pytest.skip("RabbitMQ counts a dead child's deliveries on redelivery (its connection closed)")
    # Given a child that reserved three messages (max_deliveries is 3) and was running the first
    broker.enqueue([env(body=b"poison"), env(body=b"a"), env(body=b"b")])
    for _ in range(3):
        held = broker.reserve(["default"], 3, owner="child-1", lease=60)
        assert [d.body for d in held] == [b"poison", b"a", b"b"]
        # When it dies three times running the first one
        assert broker.release_owner("child-1", running=[held[0].id]) == 3
    # Then only the one that ran is dead; its batch-mates were never counted, and wait at their place
    [dead] = broker.dead_letters()
    assert dead.body == b"poison"
    again = broker.reserve(["default"], 5, owner="child-2", lease=60)
    assert [(d.body, d.deliveries) for d in again] == [(b"a", 1), (b"b", 1)]


def test_release_owner_with_unknown_running_counts_every_message(broker: Broker, broker_kind: str) -> None:
    if broker_kind == "amqp":
        pytest.skip("RabbitMQ counts a dead child's deliveries on redelivery (its connection closed)")
    broker.enqueue([env(), env()])
    broker.reserve(["default"], 2, owner="child-1", lease=60)
    assert broker.release_owner("child-1", running=None) == 2
    again = broker.reserve(["default"], 5, owner="child-2", lease=60)
    assert [d.deliveries for d in again] == [2, 2]


def test_extend_owner_keeps_every_lease_of_that_owner(broker: Broker, broker_kind: str) -> None:
    if broker_kind == "amqp":
        assert broker.extend_owner("child-1", 60) == 0  # held on the child's own channel: only it extends
        return
    # Given two messages leased for 1 s to child-1 and one to child-2
    broker.enqueue([env(), env(), env()])
    mine = broker.reserve(["default"], 2, owner="child-1", lease=1)
    broker.reserve(["default"], 1, owner="child-2", lease=1)
    # When child-1's leases are extended on its behalf, and the original lease passes
    assert broker.extend_owner("child-1", 60) == 2
    assert broker.extend_owner("nobody", 60) == 0
    time.sleep(1.2)
    broker.recover()
    # Then child-1 still holds both (its tokens are valid), and only child-2's message came back
    assert broker.extend(mine, 60) == []
    [back] = broker.reserve(["default"], 5, owner="child-3", lease=60)
    assert back.id not in {d.id for d in mine}


def test_dead_letter_list_requeue_and_purge(broker: Broker) -> None:
    # Given two messages dead-lettered explicitly
    broker.enqueue([env(body=b"a"), env(body=b"b")])
    a, b = broker.reserve(["default"], 2, owner=OWNER, lease=5)
    broker.dead_letter(a, "unknown task 'x'")
    broker.dead_letter(b, "undecodable", body=b"b!")
    # Then they are listed oldest first with their reasons
    dead = broker.dead_letters()
    assert [(x.id, x.reason, x.body) for x in dead] == [(a.id, "unknown task 'x'", b"a"), (b.id, "undecodable", b"b!")]
    assert broker.dead_letters(queue="other") == []
    # When one is requeued and the other purged
    assert broker.requeue_dead([a.id]) == 1
    assert broker.purge_dead() == 1
    # Then the requeued one is ready again with its deliveries reset
    [d] = broker.reserve(["default"], 5, owner=OWNER, lease=5)
    assert (d.id, d.deliveries) == (a.id, 1)
    assert broker.dead_letters() == []


def test_idempotency_key_dedupes_while_pending_or_running(broker: Broker) -> None:
    # Given a message with a key
    first = env(key="receipt-42")
    assert broker.enqueue([first]) == [first.id]
    # When another with the same key is enqueued, pending or running
    assert broker.enqueue([env(key="receipt-42")]) == [first.id]
    [d] = broker.reserve(["default"], 5, owner=OWNER, lease=5)
    assert broker.enqueue([env(key="receipt-42")]) == [first.id]
    # Then only one exists; once acked, the key is free again
    broker.ack([d])
    third = env(key="receipt-42")
    assert broker.enqueue([third]) == [third.id]


def test_purge_deletes_ready_and_scheduled_only(broker: Broker) -> None:
    broker.enqueue([env(), env(), env(eta=time.time() + 60), env("other")])
    [running] = broker.reserve(["default"], 1, owner=OWNER, lease=5)
    assert broker.purge("default") == 2
    assert stats_of(broker) == (0, 0, 1, 0)
    assert stats_of(broker, "other") == (1, 0, 0, 0)
    broker.ack([running])


def test_reserve_waits_for_a_message_up_to_its_timeout(broker: Broker) -> None:
    # Given an empty queue, an idle reserve returns empty after about its timeout
    started = time.monotonic()
    assert broker.reserve(["default"], 1, owner=OWNER, lease=5, timeout=0.3) == []
    assert 0.25 <= time.monotonic() - started < 2.0
    # When a message arrives while a reserve waits, the reserve wakes with it
    timer = threading.Timer(0.2, lambda: broker.enqueue([env(body=b"late")]))
    timer.start()
    started = time.monotonic()
    got = broker.reserve(["default"], 1, owner=OWNER, lease=5, timeout=3)
    timer.join()
    assert [d.body for d in got] == [b"late"]
    assert time.monotonic() - started < 1.5


def test_stop_waiting_ends_a_waiting_reserve_at_once_and_later_ones_take_what_is_ready_without_waiting(
    broker: Broker,
) -> None:
    # Given a reserve waiting up to 10 s on an empty queue
    timer = threading.Timer(0.3, broker.stop_waiting)  # a worker child's SIGTERM handler calls it
    timer.start()
    started = time.monotonic()
    got = broker.reserve(["default"], 1, owner=OWNER, lease=5, timeout=10)
    timer.join()
    # Then stop_waiting from another thread ends that wait at once
    assert got == []
    assert time.monotonic() - started < 2.0
    # And a later reserve does not wait, yet still takes what is ready
    started = time.monotonic()
    assert broker.reserve(["default"], 1, owner=OWNER, lease=5, timeout=10) == []
    assert time.monotonic() - started < 1.0
    broker.enqueue([env(body=b"ready")])
    taken = broker.reserve(["default"], 1, owner=OWNER, lease=5, timeout=10)
    assert [d.body for d in taken] == [b"ready"]
    broker.ack(taken)


def test_concurrent_reservers_never_share_a_message(broker: Broker) -> None:
    # Given 400 messages and 4 threads reserving in small batches
    broker.enqueue([env(body=str(i).encode()) for i in range(400)])
    seen: list[str] = []
    lock = threading.Lock()

    def drain(owner: str) -> None:
        while True:
            got = broker.reserve(["default"], 7, owner=owner, lease=30)
            if not got:
                return
            with lock:
                seen.extend(d.id for d in got)
            broker.ack(got)

    threads = [threading.Thread(target=drain, args=(f"t{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    # Then every message was reserved exactly once
    assert len(seen) == 400
    assert len(set(seen)) == 400


def test_workers_registry_expires_silent_workers(broker: Broker) -> None:
    from conveyor.brokers import WorkerInfo

    # Given a worker registered for 1 s and one for 30 s (a first call can take longer than a short
    # TTL on a loaded machine: the listing right after is checked only if it ended within the TTL)
    now = time.time()
    a = WorkerInfo("host.1", "host", 1, ("default",), 2, "process", now, now)
    b = WorkerInfo("host.2", "host", 2, ("mail",), 4, "thread", now, now, processed=7)
    began = time.time()
    broker.register_worker(a, ttl=1.0)
    broker.register_worker(b, ttl=30)
    registered = time.time()
    listed = broker.workers()
    assert listed[-1] == b
    if time.time() < began + 1.0:
        assert [w.id for w in listed] == ["host.1", "host.2"]
    # When its TTL passes without a new registration, it is gone, the other stays
    time.sleep(max(0.0, registered + 1.1 - time.time()))
    assert [w.id for w in broker.workers()] == ["host.2"]
    broker.unregister_worker("host.2")
    assert broker.workers() == []


@pytest.mark.parametrize("n", [1, 3])
def test_recover_promotes_due_and_expired(broker: Broker, n: int) -> None:
    # Messages due 0.3 s ahead, sent on a connection opened before: a first call can take longer on a
    # loaded machine (Cluster: the client learns the slots), and a message whose eta passed on the
    # way is ready at once, leaving recover() nothing to promote
    broker.stats()
    due = time.time() + 0.3
    broker.enqueue([env(eta=due) for _ in range(n)])
    time.sleep(max(0.0, due + 0.1 - time.time()))
    moved = broker.recover()
    # RabbitMQ's delay queues promote a due message themselves (by their TTL), and on a busy machine
    # may not have yet, or may have before recover() looked: there, what counts is that all end ready.
    if type(broker).__name__ == "AMQPBroker":
        wait_until(lambda: broker.recover() >= 0 and stats_of(broker) == (n, 0, 0, 0), 10, "the due messages")
    else:
        assert moved >= n
    assert stats_of(broker) == (n, 0, 0, 0)


def test_cancel_deletes_only_waiting_messages(broker: Broker) -> None:
    # Given a ready, a scheduled (with a key) and an in-flight message
    ready, later, running = env(), env(eta=time.time() + 60, key="k"), env()
    broker.enqueue([running])
    [held] = broker.reserve(["default"], 1, owner=OWNER, lease=5)
    broker.enqueue([ready, later])
    # When all three and an unknown id are cancelled
    gone = broker.cancel([ready.id, later.id, running.id, "nope"])
    # Then the waiting two are gone (and the key is free), the running one stays
    assert sorted(gone) == sorted([ready.id, later.id])
    assert stats_of(broker) == (0, 0, 1, 0)
    fresh = env(key="k")
    assert broker.enqueue([fresh]) == [fresh.id]
    broker.ack([held])


# -- a reused explicit task id (issue 11, item 12) ------------------------------------------------


def _hold(broker: Broker, state: str) -> Envelope:
    """Enqueue a message and bring it to ``state`` (ready, scheduled, in_flight or dead)."""
    first = env(body=b"first", eta=time.time() + 60 if state == "scheduled" else None)
    broker.enqueue([first])
    if state in ("in_flight", "dead"):
        [held] = broker.reserve(["default"], 1, owner=OWNER, lease=30)
        if state == "dead":
            broker.dead_letter(held, "test")
    return first


@pytest.mark.parametrize("state", ["ready", "scheduled", "in_flight", "dead"])
def test_reused_task_id_is_refused_while_the_broker_holds_it(broker: Broker, state: str) -> None:
    from conveyor.errors import ConveyorError, DuplicateTaskId

    # Given a message in each state the broker holds
    first = _hold(broker, state)
    before = stats_of(broker)
    # When another message is enqueued with the same id, in a batch with a fresh one
    fresh = env(body=b"fresh")
    with pytest.raises(DuplicateTaskId) as caught:
        broker.enqueue([fresh, Envelope(first.id, "default", b"second")])
    # Then one clear ConveyorError names the id, and nothing of the batch is stored
    assert caught.value.task_id == first.id
    assert isinstance(caught.value, ConveyorError)
    assert stats_of(broker) == before
    assert broker.cancel([fresh.id]) == []
    if state == "ready":  # and the first message is intact
        [got] = broker.reserve(["default"], 5, owner=OWNER, lease=5)
        assert (got.id, got.body) == (first.id, b"first")


def test_reused_task_id_within_one_batch_stores_nothing(broker: Broker) -> None:
    from conveyor.errors import DuplicateTaskId

    # Given a batch that repeats an id (in the same queue, and across two queues)
    a, b = env(body=b"a"), env(body=b"b")
    for batch in ([a, b, Envelope(a.id, "default", b"again")], [a, Envelope(a.id, "other", b"again")]):
        # When it is enqueued, Then it is refused whole
        with pytest.raises(DuplicateTaskId):
            broker.enqueue(batch)
        assert stats_of(broker) == (0, 0, 0, 0)
        assert stats_of(broker, "other") == (0, 0, 0, 0)


def test_reused_task_id_over_two_queues_stores_nothing(broker: Broker) -> None:
    from conveyor.errors import DuplicateTaskId

    # Given a message held in the default queue
    first = _hold(broker, "ready")
    # When a batch over two queues reuses its id in the default queue
    other = env("other", b"other")
    with pytest.raises(DuplicateTaskId):
        broker.enqueue([other, Envelope(first.id, "default", b"second")])
    # Then the other queue's message is not stored either
    assert stats_of(broker, "other") == (0, 0, 0, 0)
    assert stats_of(broker) == (1, 0, 0, 0)


def test_reused_task_id_is_accepted_once_its_message_left_the_broker(broker: Broker) -> None:
    # Given a message that was acked and another that was cancelled
    done, gone = env(body=b"done"), env(body=b"gone")
    broker.enqueue([done])
    broker.ack(broker.reserve(["default"], 1, owner=OWNER, lease=30))
    broker.enqueue([gone])
    assert broker.cancel([gone.id]) == [gone.id]
    # When both ids are enqueued again
    again = [Envelope(done.id, "default", b"again 1"), Envelope(gone.id, "default", b"again 2")]
    assert broker.enqueue(again) == [done.id, gone.id]
    # Then the new messages are stored and delivered
    got = broker.reserve(["default"], 5, owner=OWNER, lease=5)
    assert [(d.id, d.body) for d in got] == [(done.id, b"again 1"), (gone.id, b"again 2")]


def test_reused_task_id_with_a_key(broker: Broker) -> None:
    from conveyor.errors import DuplicateTaskId

    # Given a pending message with key k
    first = env(body=b"first", key="k")
    broker.enqueue([first])
    # When the same id is enqueued with the same key (a beat re-firing its slot): it folds, no error
    assert broker.enqueue([Envelope(first.id, "default", b"again", key="k")]) == [first.id]
    # When the same id comes with a free key: DuplicateTaskId, and that key is not taken by it
    with pytest.raises(DuplicateTaskId):
        broker.enqueue([Envelope(first.id, "default", b"again", key="free")])
    fresh = env(body=b"fresh", key="free")
    assert broker.enqueue([fresh]) == [fresh.id]
    # Then exactly the two messages are stored
    got = broker.reserve(["default"], 5, owner=OWNER, lease=5)
    assert [(d.id, d.body) for d in got] == [(first.id, b"first"), (fresh.id, b"fresh")]
