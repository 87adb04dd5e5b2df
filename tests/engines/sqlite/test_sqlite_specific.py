"""What only the SQLite broker has to prove: many OS processes on one file, fork, URLs, durability.

The conformance suite (``tests/conformance``) covers the contract with threads in one process;
these tests use real processes, because that is where SQLite's locking and WAL matter. Every
child process is bounded by a timeout and killed if it overstays.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

from conveyor.backends import from_url as backend_from_url
from conveyor.backends.sqlite import SQLiteResultBackend
from conveyor.brokers import Envelope
from conveyor.brokers import from_url as broker_from_url
from conveyor.brokers.sqlite import SQLiteBroker
from conveyor.errors import BrokerUnavailable, ConfigurationError
from conveyor.states import State

#: Seconds any child process may take before the test kills it and fails.
CHILD_TIMEOUT = 20.0

# A reserving process: opens the broker, says "ready", waits for "go" on stdin so that every
# process starts draining at the same moment, then prints each id it reserved and acked. Each
# batch "works" for 2 ms before its ack, as a task would: without it one process can drain the
# whole file before the other has read its "go", and the test would not exercise concurrency.
DRAIN = textwrap.dedent(
    """
    import sys
    import time
    from conveyor.brokers.sqlite import SQLiteBroker

    broker = SQLiteBroker.from_url(sys.argv[1])
    broker.stats()
    print("ready", flush=True)
    sys.stdin.readline()
    while got := broker.reserve(["default"], 3, owner=sys.argv[2], lease=30):
        time.sleep(0.002)
        broker.ack(got)
        print("\\n".join(d.id for d in got), flush=True)
    """
)


def envelopes(count: int, **kw: object) -> list[Envelope]:
    return [Envelope(uuid.uuid4().hex, "default", b"x", **kw) for _ in range(count)]  # type: ignore[arg-type]


def python(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


def test_two_processes_draining_one_file_never_share_a_message(tmp_path: Path) -> None:
    # Given 1,000 messages in one file and two separate OS processes ready to reserve from it
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    producer = SQLiteBroker.from_url(url)
    ids = producer.enqueue(envelopes(1000))
    children = [python(DRAIN, url, f"proc-{i}") for i in range(2)]
    try:
        for child in children:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
        # When both drain at once
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        outputs = [child.communicate(timeout=CHILD_TIMEOUT)[0].split() for child in children]
    finally:
        for child in children:
            child.kill()
    # Then every message was reserved exactly once, and the work was shared
    seen = outputs[0] + outputs[1]
    assert sorted(seen) == sorted(ids)
    assert all(outputs), "one process got nothing: the test did not exercise concurrency"
    assert producer.stats()[0].in_flight == producer.stats()[0].ready == 0
    producer.close()


def _run_forked(child: object) -> int:
    """Fork; run ``child()`` in the child and exit 0 if it returns, 1 if it raises; return the exit code."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            child()  # type: ignore[operator]
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_a_forked_child_opens_its_own_connection_and_works(tmp_path: Path) -> None:
    # Given a broker already used in this process, holding a message
    broker = SQLiteBroker.from_url(f"sqlite:///{tmp_path / 'fork.db'}")
    [msg_id] = broker.enqueue(envelopes(1))
    parent_conn = broker.db.get()

    def child() -> None:
        # Then the child gets a connection of its own, and every operation works through it
        assert broker.db.get() is not parent_conn
        [d] = broker.reserve(["default"], 1, owner="child", lease=30)
        assert d.id == msg_id
        broker.ack([d])
        broker.enqueue([Envelope("from-child", "default", b"y")])
        broker.close()

    # When a forked child uses the same broker object
    assert _run_forked(child) == 0
    # Then the parent sees the child's work, through its own (still working) connection
    assert broker.db.get() is parent_conn
    [d] = broker.reserve(["default"], 5, owner="parent", lease=30)
    assert d.id == "from-child"
    broker.close()


def test_a_forked_childs_writes_survive_the_parent_closing(tmp_path: Path) -> None:
    # Given a broker used in this process, and a forked child that opened its own connection
    url = f"sqlite:///{tmp_path / 'fork.db'}"
    broker = SQLiteBroker.from_url(url)
    broker.enqueue(envelopes(1))
    to_child_r, to_child_w = os.pipe()
    to_parent_r, to_parent_w = os.pipe()

    def child() -> None:
        broker.stats()
        os.write(to_parent_w, b"1")
        os.read(to_child_r, 1)
        broker.enqueue([Envelope("from-child", "default", b"y")])

    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            child()
            code = 0
        finally:
            os._exit(code)
    # When the parent closes its connection while the child still has one open, then the child commits
    os.read(to_parent_r, 1)
    broker.close()
    os.write(to_child_w, b"1")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # Then the child's committed message is in the file for everyone
    fresh = SQLiteBroker.from_url(url)
    assert fresh.stats()[0].ready == 2
    fresh.close()


def test_relative_and_absolute_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a working directory
    monkeypatch.chdir(tmp_path)
    # When brokers open a relative and an absolute URL
    relative = broker_from_url("sqlite:///sub/rel.db")
    absolute = broker_from_url(f"sqlite:///{tmp_path / 'abs.db'}")  # "sqlite:////tmp/..." (four slashes)
    relative.enqueue(envelopes(1))
    absolute.enqueue(envelopes(1))
    # Then the relative file sits under the working directory, the absolute one where it was named
    assert (tmp_path / "sub" / "rel.db").is_file()
    assert (tmp_path / "abs.db").is_file()
    assert f"sqlite:///{tmp_path}".startswith("sqlite:////")
    relative.close()
    absolute.close()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite://host/x.db"])
def test_urls_without_a_path_or_with_a_host_are_refused(url: str) -> None:
    with pytest.raises(ConfigurationError, match="sqlite:///"):
        SQLiteBroker.from_url(url)


def _open_after(barrier: Any, url: str, answers: Any) -> None:
    barrier.wait()
    try:
        SQLiteBroker.from_url(url).stats()
        answers.put("ok")
    except Exception as exc:  # reported to the test, which shows it
        answers.put(repr(exc))


@pytest.mark.timeout(120)
def test_processes_opening_a_fresh_file_at_once_all_get_in(tmp_path: Path) -> None:
    # Given 6 processes released at the same instant on a file that does not exist yet, 30 times
    # (before the fix about one round in ten had one get "database is locked" switching to WAL)
    ctx = multiprocessing.get_context("fork")
    failures = []
    for round_ in range(30):
        url = f"sqlite:///{tmp_path / f'fresh-{round_}.db'}"
        barrier, answers = ctx.Barrier(6), ctx.Queue()
        procs = [ctx.Process(target=_open_after, args=(barrier, url, answers)) for _ in range(6)]
        for proc in procs:
            proc.start()
        # When each one opens the broker
        results = [answers.get(timeout=CHILD_TIMEOUT) for _ in procs]
        for proc in procs:
            proc.join(timeout=CHILD_TIMEOUT)
        failures += [result for result in results if result != "ok"]
    # Then every one of them got in
    assert failures == []


@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite:///x.db?mode=memory"])
def test_in_memory_databases_are_refused_with_the_alternatives(url: str) -> None:
    # An in-memory SQLite database is private to each connection: workers would never see the tasks
    with pytest.raises(ConfigurationError, match=r"memory://"):
        SQLiteBroker.from_url(url)
    with pytest.raises(ConfigurationError, match=r"sqlite:///conveyor.db"):
        backend_from_url(url)


def test_an_unknown_url_option_is_an_error_not_ignored() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown SQLite URL option\(s\) synchronus"):
        SQLiteBroker.from_url("sqlite:///x.db?synchronus=full")


def test_results_share_the_brokers_file(tmp_path: Path) -> None:
    # Given a broker and a result backend built from the same URL
    url = f"sqlite:///{tmp_path / 'one.db'}"
    broker = broker_from_url(url)
    backend = backend_from_url(url)
    assert isinstance(backend, SQLiteResultBackend)
    broker.enqueue(envelopes(1))
    backend.set("task-1", State.SUCCESS, b"42", ttl=60)
    # Then both live in that one file, in their own tables
    with sqlite3.connect(tmp_path / "one.db") as raw:
        assert raw.execute("SELECT COUNT(*) FROM messages").fetchone() == (1,)
        assert raw.execute("SELECT record FROM results WHERE id = 'task-1'").fetchone() == (b"42",)
    raw.close()
    broker.close()
    backend.close()


# A producer that enqueues, says so, then waits to be killed with SIGKILL.
PRODUCE_THEN_HANG = textwrap.dedent(
    """
    import sys, time
    from conveyor.brokers import Envelope
    from conveyor.brokers.sqlite import SQLiteBroker

    broker = SQLiteBroker.from_url(sys.argv[1])
    broker.enqueue([Envelope("durable-1", "default", b"keep me")])
    print("enqueued", flush=True)
    time.sleep(60)
    """
)


def test_enqueue_is_durable_once_it_returns(tmp_path: Path) -> None:
    # Given a producer process whose enqueue has returned
    url = f"sqlite:///{tmp_path / 'durable.db'}"
    producer = python(PRODUCE_THEN_HANG, url)
    try:
        assert producer.stdout is not None
        assert producer.stdout.readline().strip() == "enqueued"
        # When it is killed with SIGKILL, without closing anything
        producer.send_signal(signal.SIGKILL)
        producer.wait(timeout=CHILD_TIMEOUT)
    finally:
        producer.kill()
        producer.communicate(timeout=CHILD_TIMEOUT)
    # Then a fresh broker object (a new connection) finds the message, body intact
    fresh = SQLiteBroker.from_url(url)
    [d] = fresh.reserve(["default"], 1, owner="w", lease=30)
    assert (d.id, d.body) == ("durable-1", b"keep me")
    fresh.close()


def test_one_key_twice_in_one_batch_stores_one_message(tmp_path: Path) -> None:
    # Given a batch in which two envelopes carry the same idempotency key
    broker = SQLiteBroker.from_url(f"sqlite:///{tmp_path / 'keys.db'}")
    first, second = envelopes(2, key="receipt-42")
    # When it is enqueued, then the batch is stored with one message for the key (the first)
    assert broker.enqueue([first, second]) == [first.id, first.id]
    assert broker.stats()[0].ready == 1
    broker.close()


def test_a_database_locked_too_long_is_broker_unavailable_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given another connection holding the write lock, and a short busy timeout
    monkeypatch.setattr("conveyor.brokers.sqlite.connection.BUSY_TIMEOUT_MS", 100)
    path = tmp_path / "locked.db"
    broker = SQLiteBroker.from_url(f"sqlite:///{path}")
    broker.stats()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        # When the broker needs to write, then it fails with BrokerUnavailable naming the file
        with pytest.raises(BrokerUnavailable, match=re.escape(str(path))):
            broker.enqueue(envelopes(1))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    # And once the lock is released it works again
    assert len(broker.enqueue(envelopes(1))) == 1
    broker.close()


def test_close_then_use_again_reconnects(tmp_path: Path) -> None:
    broker = SQLiteBroker.from_url(f"sqlite:///{tmp_path / 'reopen.db'}")
    broker.enqueue(envelopes(1))
    broker.close()
    assert broker.stats()[0].ready == 1
    broker.close()


def test_the_schema_ships_as_package_data() -> None:
    # The DDL is read with importlib.resources, so a wheel without it could not open a database.
    import importlib.resources

    ddl = importlib.resources.files("conveyor.brokers.sqlite").joinpath("schema.sql").read_text()
    for table in ("messages", "queues", "workers", "results"):
        assert f"CREATE TABLE IF NOT EXISTS {table}" in ddl


def test_a_file_made_before_the_started_column_gets_it_and_keeps_its_messages(tmp_path: Path) -> None:
    # Given a broker file whose messages table predates the started/requeues columns, holding a message
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:
        old.execute(
            "CREATE TABLE messages (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, "
            "queue TEXT NOT NULL, priority INTEGER NOT NULL, state INTEGER NOT NULL, eta REAL, body BLOB NOT NULL, "
            "key TEXT, deliveries INTEGER NOT NULL DEFAULT 0, owner TEXT, token TEXT, lease_until REAL, reason TEXT, "
            "dead_at REAL)"
        )
        old.execute("INSERT INTO messages (id, queue, priority, state, body) VALUES ('old', 'default', 0, 0, x'00')")
    old.close()
    # When two brokers of this version open it
    first, second = SQLiteBroker(f"sqlite:///{path}"), SQLiteBroker(f"sqlite:///{path}")
    # Then the columns are added once, and the old message is served and heartbeated like a new one
    [d] = first.reserve(["default"], 1, owner="w", lease=5)
    assert (d.id, d.deliveries) == ("old", 1)
    assert second.extend([d], 5, running=[d.id]) == []
    probe = sqlite3.connect(path)
    columns = [row[1] for row in probe.execute("PRAGMA table_info(messages)")]
    probe.close()
    assert columns[-2:] == ["started", "requeues"]
    first.close()
    second.close()
