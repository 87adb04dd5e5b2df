"""Beat through real outages: a stopped broker at a firing instant, a backend stalled past the lease.

The promise (docs/beat.md): a slow or unavailable broker or backend may delay a slot, never drop
it, and never fire it twice. The clock is in the test's hands (as in test_beat.py); the outages are
real: a private redis-server stopped or SIGSTOPped, or a SQLite file whose write lock another
connection holds.
"""

from __future__ import annotations

import contextlib
import datetime
import socket
import sqlite3
import threading
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import App, BrokerUnavailable
from conveyor.backends.redis import RedisResultBackend
from conveyor.brokers.amqp import AMQPBroker
from conveyor.brokers.redis import RedisBroker
from conveyor.brokers.sqlite import connection as sqlite_connection
from conveyor.scheduler.beat import Beat, slot_key
from tests.beat_clock import T0, Clock, fired_slots, iso, tick_at
from tests.conftest import AMQP_URL, url_for
from tests.servers import PrivateRedis, free_port
from tests.servers import private_redis as running_redis

LEASE = 2.0


def pause_for(server: PrivateRedis, seconds: float) -> threading.Timer:
    """SIGSTOP the server now and SIGCONT it ``seconds`` later (from a timer thread)."""
    server.freeze()
    timer = threading.Timer(seconds, server.thaw)
    timer.start()
    return timer


def _running(folder: Path, *, durable: bool) -> Iterator[PrivateRedis]:
    """A private server (10 s to answer or exit) in a new ``folder``, killed when the test ends."""
    folder.mkdir()
    with running_redis(folder, durable=durable, timeout=10) as server:
        yield server


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A server without persistence: stop, restart, pause at will."""
    yield from _running(tmp_path / "private-redis", durable=False)


class Cut:
    """A TCP forwarder to a real server that the test can cut (close every connection, refuse new ones) and mend.

    It stands for the network between the beat and a server the test must not stop (the shared
    RabbitMQ): while cut, the server is unreachable from the beat exactly as after a network failure.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None

    def mend(self) -> None:
        """Listen again (on the same port) and forward every connection to the target."""
        listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Close the listener and every forwarded connection: new ones are refused."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        if self._listener is not None:
            sockets.append(self._listener)
            self._listener = None
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # cut
                return
            upstream = socket.create_connection(self.target, timeout=5)
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(a, b), daemon=True).start()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    for sock in (source, sink):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A server with an append-only file fsynced on every write: a restart keeps every key."""
    yield from _running(tmp_path / "durable-redis", durable=True)


def make_app(broker: str, backend: str, **settings: Any) -> App:
    app = App("beat-outage", broker=broker, backend=backend, beat_lease=LEASE, beat_interval=0.5, beat_grace=30.0)

    @app.periodic(every=datetime.timedelta(seconds=10), **settings)
    @app.task(name="tick")
    def tick() -> None: ...

    return app


def ticked_once(app: App) -> tuple[Beat, Clock]:
    """A beat of ``app`` that ticked once at T0 - 5 (it leads, nothing is due yet), and the clock it reads."""
    clock = Clock(T0 - 5)
    beat = Beat(app, clock=clock)
    beat.tick()
    return beat, clock


def hold_write_lock(path: Path) -> sqlite3.Connection:
    """Another connection that takes the file's write lock (BEGIN IMMEDIATE) and keeps it until rolled back."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN IMMEDIATE")
    return conn


# -- item 4: the broker fails the enqueue at a firing instant ---------------------------------------


@pytest.mark.parametrize("backend_kind", ["redis", "sqlite"])
def test_a_slot_whose_enqueue_fails_fires_once_when_the_redis_broker_is_back(
    private_redis: PrivateRedis,
    backend_kind: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a beat whose broker is a private Redis (retrying for 1 s) and its backend another store
    monkeypatch.setattr(RedisBroker, "retry_for", 1.0)
    app = make_app(private_redis.url, url_for(backend_kind, tmp_path, request))
    beat, clock = ticked_once(app)
    # When the broker server is down at the firing instant of slot T0
    private_redis.kill()
    clock.now = T0
    with pytest.raises(BrokerUnavailable):
        beat.tick()
    # And it comes back (empty: no persistence) before the next ticks
    private_redis.start()
    tick_at(clock, (T0 + 1, T0 + 2, T0 + 10), beat)
    # Then slot T0 was enqueued once, late, and the schedule went on
    assert fired_slots(app) == Counter({iso(0): 1, iso(10): 1})
    app.close()


def test_a_slot_whose_enqueue_fails_fires_once_when_the_sqlite_broker_is_unlocked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a beat on a SQLite broker whose writers wait 0.5 s for the lock, and a backend in another file
    monkeypatch.setattr(sqlite_connection, "BUSY_TIMEOUT_MS", 500)
    broker_path = tmp_path / "broker.db"
    app = make_app(f"sqlite:///{broker_path}", f"sqlite:///{tmp_path / 'results.db'}")
    beat, clock = ticked_once(app)
    app.broker.stats()  # the broker file exists (and is in WAL mode) before another connection locks it
    # When another connection holds the broker's write lock longer than that at the firing instant of T0
    holder = hold_write_lock(broker_path)
    clock.now = T0
    with pytest.raises(BrokerUnavailable, match="locked"):
        beat.tick()
    # And lets it go before the next ticks
    holder.execute("ROLLBACK")
    holder.close()
    tick_at(clock, (T0 + 1, T0 + 2, T0 + 10), beat)
    # Then slot T0 was enqueued once, late, and the schedule went on
    assert fired_slots(app) == Counter({iso(0): 1, iso(10): 1})
    app.close()


def test_a_slot_whose_enqueue_fails_fires_once_when_rabbitmq_is_reachable_again(
    amqp_vhost: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a beat whose broker is RabbitMQ (retrying for 1 s) through a network path the test can
    # cut, and its backend a SQLite file
    monkeypatch.setattr(AMQPBroker, "retry_for", 1.0)
    parts = urllib.parse.urlsplit(AMQP_URL)
    network = Cut((parts.hostname or "127.0.0.1", parts.port or 5672))
    network.mend()
    broker = (
        f"amqp://{parts.username}:{parts.password}@127.0.0.1:{network.port}/{urllib.parse.quote(amqp_vhost, safe='')}"
    )
    app = make_app(broker, f"sqlite:///{tmp_path / 'results.db'}")
    try:
        beat, clock = ticked_once(app)
        app.broker.stats()  # connected
        # When RabbitMQ is unreachable at the firing instant of slot T0
        network.cut()
        clock.now = T0
        with pytest.raises(BrokerUnavailable):
            beat.tick()
        # And reachable again before the next ticks
        network.mend()
        tick_at(clock, (T0 + 1, T0 + 2, T0 + 10), beat)
        # Then slot T0 was enqueued once, late, and the schedule went on
        assert fired_slots(app) == Counter({iso(0): 1, iso(10): 1})
    finally:
        app.close()
        network.cut()


@pytest.mark.parametrize("then", ["ticks on", "stops"])
def test_a_slot_claimed_just_before_its_one_redis_server_dies_fires_once_when_it_is_back(
    durable_redis: PrivateRedis, then: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a beat whose broker and backend are one Redis server (append-only, fsync always),
    # each retrying for 1 s, and that server killed right after the beat claims slot T0
    monkeypatch.setattr(RedisBroker, "retry_for", 1.0)
    monkeypatch.setattr(RedisResultBackend, "retry_for", 1.0)
    app = make_app(durable_redis.url, durable_redis.url)
    claim = app.backend.claim

    def claim_then_die(key: str, ttl: float) -> bool:
        won = claim(key, ttl)
        if won and key == slot_key(app.name, "tick", datetime.datetime.fromtimestamp(T0, datetime.UTC)):
            durable_redis.kill()
        return won

    monkeypatch.setattr(app.backend, "claim", claim_then_die)
    beat, clock = ticked_once(app)
    # When slot T0 comes: claimed, then neither enqueued nor given back (the server is gone)
    clock.now = T0
    with pytest.raises(BrokerUnavailable):
        beat.tick()
    # And the server comes back (with the claim)
    durable_redis.start()
    if then == "stops":
        # Then a beat stopped now enqueues the slot it owes as it stops
        stop = threading.Event()
        stop.set()
        beat.run(stop)
        assert fired_slots(app) == Counter({iso(0): 1})
    else:
        tick_at(clock, (T0 + 1, T0 + 2, T0 + 10), beat)
        # Then slot T0 was enqueued once, late, by the beat that holds its claim, and the schedule went on
        assert fired_slots(app) == Counter({iso(0): 1, iso(10): 1})
    assert not beat.owed
    app.close()


# -- item 5: the backend stalls longer than the lease inside one tick --------------------------------


@pytest.mark.parametrize("catch_up", [False, True])
@pytest.mark.parametrize("broker_kind", ["sqlite", "redis"])
def test_a_redis_backend_stalled_past_the_lease_delays_the_due_slots_and_drops_none(
    private_redis: PrivateRedis, broker_kind: str, catch_up: bool, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # Given one beat whose backend is a private Redis, with slots T0 and T0+10 due at T0+15
    app = make_app(url_for(broker_kind, tmp_path, request), private_redis.url, catch_up=catch_up)
    beat, clock = ticked_once(app)
    clock.now = T0 + 15
    # When the backend server is SIGSTOPped for longer than the lease during the next tick
    timer = pause_for(private_redis, LEASE + 1.0)
    beat.tick()
    timer.join(timeout=10)
    # And the beat goes on ticking
    tick_at(clock, (T0 + 16, T0 + 17, T0 + 20), beat)
    # Then the due run fired once: T0+10 for both slots, or each slot with catch_up; then T0+20
    late = {iso(0): 1, iso(10): 1} if catch_up else {iso(10): 1}
    assert fired_slots(app) == Counter({**late, iso(20): 1})
    app.close()


@pytest.mark.parametrize("catch_up", [False, True])
@pytest.mark.parametrize("broker_kind", ["redis", "amqp"])
def test_a_sqlite_backend_locked_past_the_lease_delays_the_due_slots_and_drops_none(
    broker_kind: str, catch_up: bool, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # Given one beat whose backend is a SQLite file, with slots T0 and T0+10 due at T0+15
    results = tmp_path / "results.db"
    app = make_app(url_for(broker_kind, tmp_path, request), f"sqlite:///{results}", catch_up=catch_up)
    beat, clock = ticked_once(app)
    clock.now = T0 + 15
    # When another connection holds the backend's write lock for longer than the lease during the next tick
    holder = hold_write_lock(results)
    timer = threading.Timer(LEASE + 1.0, holder.execute, args=("ROLLBACK",))
    timer.start()
    beat.tick()
    timer.join(timeout=10)
    holder.close()
    # And the beat goes on ticking
    tick_at(clock, (T0 + 16, T0 + 17, T0 + 20), beat)
    # Then the due run fired once: T0+10 for both slots, or each slot with catch_up; then T0+20
    late = {iso(0): 1, iso(10): 1} if catch_up else {iso(10): 1}
    assert fired_slots(app) == Counter({**late, iso(20): 1})
    app.close()


def test_a_slot_whose_enqueue_failed_past_the_lease_is_enqueued_by_its_claimer_once_the_broker_is_back(
    private_redis: PrivateRedis, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a leader and a standby on one backend, whose broker (a private Redis) retries for 3 s,
    # longer than the 2-second lease
    monkeypatch.setattr(RedisBroker, "retry_for", LEASE + 1.0)
    backend = url_for("redis", tmp_path, request)
    apps = [make_app(private_redis.url, backend), make_app(private_redis.url, backend)]
    clock = Clock(T0 - 5)
    leader, standby = Beat(apps[0], clock=clock), Beat(apps[1], clock=clock)
    leader.tick()
    standby.tick()
    assert (leader.leading, standby.leading) == (True, False)
    # When the broker is down at slot T0: the leader's enqueue fails after its lease lapsed
    private_redis.kill()
    clock.now = T0
    with pytest.raises(BrokerUnavailable):
        leader.tick()
    # And the standby takes over meanwhile and finds slot T0 claimed
    standby.tick()
    assert standby.leading
    # When the broker is back, both tick on
    private_redis.start()
    tick_at(clock, (T0 + 1, T0 + 10), leader, standby)
    # Then slot T0 was enqueued once (by the beat that claimed it), and T0+10 by the new leader
    assert fired_slots(apps[0]) == Counter({iso(0): 1, iso(10): 1})
    assert not leader.owed
    for app in apps:
        app.close()
