"""Idempotency keys and explicit task ids on RabbitMQ (issue 11, items 6 and 12), kept in the result backend.

A claim whose holder never landed (its producer was killed before ``tx.commit``) or finished
(its release failed because the backend was down at that moment) must not block the key; an
explicit task id still in the broker must raise DuplicateTaskId, and be free once its task left.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import App
from conveyor.backends import ResultBackend
from conveyor.backends import from_url as backend_from_url
from conveyor.backends.memory import MemoryResultBackend
from conveyor.brokers import Envelope
from conveyor.brokers.amqp import AMQPBroker
from conveyor.errors import BrokerUnavailable, DuplicateTaskId
from conveyor.states import ResultRecord, State, encode_record
from tests.servers import PrivateRedis

ROOT = Path(__file__).resolve().parents[2]


def env(key: str | None = None, task_id: str | None = None, body: bytes = b"x") -> Envelope:
    return Envelope(task_id or uuid.uuid4().hex, "default", body, key=key, explicit_id=task_id is not None)


def producer(url: str, results: ResultBackend, land_wait: float = 30.0) -> AMQPBroker:
    broker = AMQPBroker(url, max_deliveries=3, store=results, claim_land_wait=land_wait)
    return broker


@pytest.fixture
def results(tmp_path: Path) -> Iterator[ResultBackend]:
    backend = backend_from_url(f"sqlite:///{tmp_path / 'results.db'}")
    yield backend
    backend.close()


#: A producer killed (SIGKILL, by itself) right after it claimed the key and recorded itself as holder.
KILLED_AFTER_CLAIM = """
import os, signal, sys, uuid
from conveyor.backends import from_url
from conveyor.brokers import Envelope
from conveyor.brokers.amqp import AMQPBroker

url, db = sys.argv[1], sys.argv[2]
results = from_url("sqlite:///" + db)
real = results.set_value

def set_value(key, value, ttl=None):
    real(key, value, ttl)
    if ":key-holder:" in key:  # the claim and its holder are written; tx.commit has not run
        os.kill(os.getpid(), signal.SIGKILL)

results.set_value = set_value
broker = AMQPBroker(url, store=results)
broker.enqueue([Envelope(id=uuid.uuid4().hex, queue="default", body=b"lost", key="receipt-7")])
"""


def test_a_key_claimed_by_a_producer_killed_before_its_commit_is_taken_over(
    amqp_test_url: str, results: ResultBackend, tmp_path: Path
) -> None:
    # Given a producer SIGKILLed between its key claim and tx.commit (nothing stored)
    db = tmp_path / "results.db"
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_AFTER_CLAIM, amqp_test_url, str(db)], cwd=ROOT, timeout=30, check=False
    )
    assert killed.returncode == -signal.SIGKILL
    later = producer(amqp_test_url, results, land_wait=1.0)
    # When another producer sends the same key once the claim is older than the land wait
    time.sleep(1.1)
    [answered] = later.enqueue([env(key="receipt-7", body=b"kept")])
    # Then its message is stored and runs, and the key now answers it
    [delivery] = later.reserve(["default"], 1, owner="w", lease=30, timeout=5)
    assert delivery.id == answered and delivery.body == b"kept"
    assert later.enqueue([env(key="receipt-7")]) == [answered]
    later.close()


def test_a_fresh_claim_whose_producer_is_still_committing_is_honoured(
    amqp_test_url: str, results: ResultBackend
) -> None:
    # Given a key claimed a moment ago by a producer that has not committed yet (claim and holder only)
    first, second = producer(amqp_test_url, results), producer(amqp_test_url, results)
    results.claim(f"{first.prefix}:key:k", 60)
    results.set_value(f"{first.prefix}:key-holder:k", f"early {time.time()!r}".encode(), 60)
    # Then a second producer answers the first one's id and stores nothing
    assert second.enqueue([env(key="k")]) == ["early"]
    assert second.reserve(["default"], 1, owner="w", lease=30, timeout=0.3) == []
    first.close()
    second.close()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary")
def test_a_key_whose_release_failed_at_the_ack_is_free_once_its_task_finished(
    amqp_test_url: str, tmp_path: Path
) -> None:
    # Given a keyed task run by a worker whose private Redis result backend dies right before its ack
    server = PrivateRedis(tmp_path, durable=True)  # every write fsynced, so a restart keeps the claims
    server.start()
    worker_results = backend_from_url(server.url)
    worker = producer(amqp_test_url, worker_results)
    try:
        [first] = worker.enqueue([env(key="receipt-7")])
        [d] = worker.reserve(["default"], 1, owner="w", lease=30, timeout=5)
        record = ResultRecord(state=State.SUCCESS, value=1, task="t", finished=time.time())
        worker_results.set(first, State.SUCCESS, encode_record(record), 3600)
        server.kill()
        with contextlib.suppress(BrokerUnavailable):  # the ack commits; the key's release fails
            worker.ack([d])
        server.start()
        # When another process sends the same key after the task finished
        other_results = backend_from_url(server.url)
        other = producer(amqp_test_url, other_results)
        [again] = other.enqueue([env(key="receipt-7")])
        # Then a new task is stored and runs
        assert again != first
        [fresh] = other.reserve(["default"], 1, owner="w2", lease=30, timeout=5)
        assert fresh.id == again
        other.ack([fresh])
        other.close()
        other_results.close()
    finally:
        worker.close()
        worker_results.close()
        server.kill()


def test_a_reused_explicit_task_id_raises_until_its_task_left_the_broker(
    amqp_test_url: str, results: ResultBackend
) -> None:
    # Given a message sent with an explicit task id, and another producer
    first, second = producer(amqp_test_url, results), producer(amqp_test_url, results)
    assert first.enqueue([env(task_id="invoice-7")]) == ["invoice-7"]
    # When the id is sent again while the first message waits, or is running
    with pytest.raises(DuplicateTaskId) as raised:
        second.enqueue([env(), env(task_id="invoice-7")])
    assert raised.value.task_id == "invoice-7"
    [running] = first.reserve(["default"], 5, owner="w", lease=30, timeout=5)
    with pytest.raises(DuplicateTaskId):
        second.enqueue([env(task_id="invoice-7")])
    # Then nothing of the refused batch was stored
    assert first.reserve(["default"], 5, owner="w", lease=30, timeout=0.3) == []
    # And once the first one finished the id is free again
    first.ack([running])
    assert second.enqueue([env(task_id="invoice-7")]) == ["invoice-7"]
    # But not while it is a dead letter
    [again] = first.reserve(["default"], 1, owner="w", lease=30, timeout=5)
    first.dead_letter(again, "failed for good")
    with pytest.raises(DuplicateTaskId):
        second.enqueue([env(task_id="invoice-7")])
    assert first.purge_dead(["invoice-7"]) == 1
    assert second.enqueue([env(task_id="invoice-7")]) == ["invoice-7"]
    first.close()
    second.close()


def test_the_same_explicit_id_twice_in_one_batch_raises(amqp_test_url: str, results: ResultBackend) -> None:
    broker = producer(amqp_test_url, results)
    with pytest.raises(DuplicateTaskId):
        broker.enqueue([env(task_id="twice"), env(task_id="twice")])
    assert broker.enqueue([env(task_id="twice")]) == ["twice"]
    broker.close()


def test_an_app_refuses_a_reused_task_id_and_sends_generated_ones_unchecked(amqp_test_url: str, tmp_path: Path) -> None:
    # Given an app on RabbitMQ
    app = App("claims", broker=amqp_test_url, backend=f"sqlite:///{tmp_path / 'app.db'}")

    @app.task(name="work")
    def work() -> None: ...

    # Then delay() sends a generated id (no claim) and task_id= an explicit one, refused when reused
    assert not work.message(()).explicit_id and work.message((), task_id="inv-1").explicit_id
    work.delay()
    work.apply_async(task_id="inv-1")
    with pytest.raises(DuplicateTaskId):
        work.apply_async(task_id="inv-1")
    app.close()


class _Untouchable(MemoryResultBackend):
    """A store that fails any test touching it."""

    def __getattribute__(self, name: str) -> Any:
        if name in {"claim", "unclaim", "get_value", "set_value", "delete_value", "get", "set"}:
            raise AssertionError(f"the store was used: {name}")
        return super().__getattribute__(name)


def test_generated_ids_cost_no_backend_call(amqp_test_url: str) -> None:
    # Given a broker whose store fails any call
    broker = AMQPBroker(amqp_test_url, store=_Untouchable())
    # Then plain enqueues (generated ids, no key) work: they never touch the backend
    assert len(broker.enqueue([env(), env()])) == 2
    broker.close()
