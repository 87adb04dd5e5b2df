"""Fixtures shared by every test: brokers and backends by kind, each isolated per test.

Real servers only. A fixture pings its server first: locally an unreachable server skips the
tests that need it; when ``CI=true`` it fails them, so a missing server never passes silently.
Redis tests get a key prefix unique to the test and delete every key under it afterwards; RabbitMQ
tests get a queue prefix unique to the test in one vhost per test process (tests/vhosts.py).
"""

from __future__ import annotations

import os
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conveyor.backends import ResultBackend
from conveyor.backends import from_url as backend_from_url
from conveyor.brokers import Broker
from conveyor.brokers import from_url as broker_from_url
from conveyor.brokers.amqp.names import DEFAULT_PREFIX
from tests.vhosts import RunVhost, delete_queues

REDIS_URL = os.environ.get("CONVEYOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("CONVEYOR_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672")
#: The PostgreSQL server the tests use; each test run creates its own database on it (see ``postgres_db``).
POSTGRES_URL = os.environ.get("CONVEYOR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

#: Every broker kind the conformance suite runs over.
BROKER_KINDS = ["memory", "sqlite", "redis", "amqp", "postgres"]
BACKEND_KINDS = ["memory", "sqlite", "redis", "postgres"]


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` every 50 ms for up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def load_factor() -> float:
    """How loaded the machine is: the 1-minute load average per CPU, at least 1.

    For bounds a loaded machine stretches that are not themselves a promise (how late a thread is
    scheduled): multiply them by it. A bound that is a documented promise stays fixed.
    """
    return max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))


def server_missing(what: str, why: str) -> None:
    """Skip locally, fail in CI: an unreachable server must never pass silently there."""
    message = f"{what} is not reachable: {why}"
    if IN_CI:
        pytest.fail(message + " (CI=true: a missing server is a failure)")
    pytest.skip(message)


def redis_available() -> None:
    try:
        import redis
    except ImportError as exc:  # pragma: no cover - the dev extra installs it
        server_missing("redis-py", str(exc))
        return
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        server_missing(f"Redis at {REDIS_URL}", str(exc))


def redis_cleanup(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    # Hash-tagged keys start with "{prefix"; catch those too.
    keys += list(client.scan_iter(match=f"{{{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix unique to this test; every key under it is deleted afterwards."""
    redis_available()
    prefix = f"cvtest-{uuid.uuid4().hex[:12]}"  # fresh: nothing to clean before the test
    yield prefix
    redis_cleanup(prefix)


def amqp_available() -> None:
    try:
        import pika
    except ImportError as exc:  # pragma: no cover - the dev extra installs it
        server_missing("pika", str(exc))
        return
    try:
        pika.BlockingConnection(pika.URLParameters(AMQP_URL + "/%2F?socket_timeout=2&connection_attempts=1")).close()
    except pika.exceptions.AMQPError as exc:
        server_missing(f"RabbitMQ at {AMQP_URL}", repr(exc))
    except OSError as exc:
        server_missing(f"RabbitMQ at {AMQP_URL}", str(exc))


@pytest.fixture(scope="session")
def amqp_run_vhost(pytestconfig: pytest.Config) -> RunVhost:
    """The RabbitMQ vhost of this test process (one per xdist worker), made at first use, deleted at the end.

    Deleted when the session ends (``add_cleanup``), not in the teardown of the process' last test,
    whose timeout it would count against (10 s in tests/unit: a loaded machine's rabbitmqctl passes that).
    """
    vhost = RunVhost(AMQP_URL)
    pytestconfig.add_cleanup(vhost.close)
    return vhost


@pytest.fixture
def amqp_vhost(amqp_run_vhost: RunVhost) -> Iterator[str]:
    """The vhost of this test run, which this test shares with no test running at the same time.

    The tests of one process run one after the other in it: isolate a test with a queue prefix of
    its own (:func:`amqp_test_url`, as ``broker_url`` does). For a test that builds its own URL
    with :func:`amqp_url` and no prefix, the queues under the default prefix are deleted afterwards.
    """
    amqp_available()
    url = amqp_run_vhost.url()
    yield amqp_run_vhost.name
    delete_queues(url, [DEFAULT_PREFIX])


@pytest.fixture
def amqp_test_url(amqp_vhost: str) -> Iterator[str]:
    """An AMQP URL of this test alone: the run's vhost and a queue prefix unique to the test, deleted afterwards."""
    prefix = f"cvtest-{uuid.uuid4().hex[:12]}"
    url = amqp_url(amqp_vhost)
    yield f"{url}?prefix={prefix}"
    delete_queues(url, [prefix])


def postgres_available() -> None:
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - the dev extra installs it
        server_missing("psycopg", str(exc))
        return
    try:
        psycopg.connect(f"{POSTGRES_URL}/postgres?connect_timeout=2").close()
    except psycopg.Error as exc:
        server_missing(f"PostgreSQL at {POSTGRES_URL}", str(exc).strip())


@pytest.fixture(scope="session")
def postgres_db(pytestconfig: pytest.Config) -> str:
    """A database of this test run (of this xdist process) alone, dropped at the end: its URL.

    Dropped when the session ends (``add_cleanup``, as the vhost above): dropping a database that
    holds a schema per test took more than the 10 s of the unit test that happened to run last.
    """
    postgres_available()
    import psycopg

    name = f"conveyor_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{POSTGRES_URL}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(f"{POSTGRES_URL}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    pytestconfig.add_cleanup(drop)
    return f"{POSTGRES_URL}/{name}"


def postgres_schema_url(database_url: str) -> str:
    """A fresh migrated schema in ``database_url`` (a test's own tables): its conveyor URL."""
    from conveyor.brokers.postgres.migrate import migrate

    schema = f"t_{uuid.uuid4().hex[:12]}"
    migrate(database_url, schema)
    return f"{database_url}?schema={schema}"


@pytest.fixture(scope="session")
def redis_sentinel_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private Sentinel group (master, replica, three sentinels) for this test process: its URL.

    Tests share it through a prefix each (``redis-sentinel`` kind); a test that fails over makes its own.
    This one never fails over: its sentinels need not know each other, and take a master that does
    not answer for 1 s (a starved process on a loaded machine) for down only after 30 s.
    """
    from tests.ha_servers import sentinel_group

    with sentinel_group(tmp_path_factory.mktemp("sentinel"), down_after_ms=30000, failover=False) as group:
        yield group.url


@pytest.fixture(scope="session")
def redis_cluster_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private 3-master Redis Cluster for this test process: its URL (``redis-cluster`` kind)."""
    from tests.ha_servers import local_cluster

    with local_cluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster.url


def amqp_url(vhost: str) -> str:
    """The test AMQP URL of ``vhost`` (without a prefix: see :func:`amqp_test_url`)."""
    return f"{AMQP_URL}/{urllib.parse.quote(vhost, safe='')}"


def url_for(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A broker/backend URL of ``kind`` isolated to one test."""
    if kind == "memory":
        return "memory://"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'conveyor.db'}"
    if kind == "redis":
        prefix: str = request.getfixturevalue("redis_prefix")
        return f"{REDIS_URL}?prefix={prefix}"
    if kind in ("redis-sentinel", "redis-cluster"):  # private servers of this test process, gone at its end
        base: str = request.getfixturevalue(f"{kind.replace('-', '_')}_session")
        return f"{base}?prefix=cvtest-{uuid.uuid4().hex[:12]}"
    if kind == "amqp":
        url: str = request.getfixturevalue("amqp_test_url")
        return url
    if kind == "amqp-quorum":  # RabbitMQ quorum queues (tests/engines/amqp/test_quorum.py)
        quorum: str = request.getfixturevalue("amqp_test_url")
        return f"{quorum}&queue_type=quorum"
    if kind == "postgres":
        database: str = request.getfixturevalue("postgres_db")
        return postgres_schema_url(database)
    raise AssertionError(kind)


def backend_url_for(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """The result backend paired with a broker of ``kind``: its own engine, or SQLite for RabbitMQ."""
    return f"sqlite:///{tmp_path / 'results.db'}" if kind.startswith("amqp") else url_for(kind, tmp_path, request)


@pytest.fixture(params=BROKER_KINDS)
def broker_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def broker_url(broker_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    return url_for(broker_kind, tmp_path, request)


@pytest.fixture
def backend_url(broker_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """The result backend paired with ``broker_url`` (the same engine; SQLite beside RabbitMQ)."""
    return backend_url_for(broker_kind, tmp_path, request)


@pytest.fixture
def broker(broker_url: str, broker_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Broker]:
    results = backend_from_url(backend_url_for(broker_kind, tmp_path, request))
    instance = broker_from_url(broker_url, max_deliveries=3, store=results)  # as App does; RabbitMQ keeps state there
    yield instance
    instance.close()
    results.close()


@pytest.fixture(params=BACKEND_KINDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ResultBackend]:
    instance = backend_from_url(url_for(request.param, tmp_path, request))
    yield instance
    instance.close()
