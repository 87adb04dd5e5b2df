"""A real worker on RabbitMQ when the server drops its connections (this test's vhost only)."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import psutil
import pytest

from conveyor import App, BrokerUnavailable, ResultTimeout
from tests.apps.e2e_app import runs_of
from tests.e2e.conftest import WorkerProcess, enqueue, wait_until
from tests.rabbitmq_server import PrivateRabbitMQ, private_rabbitmq
from tests.vhosts import rabbitmqctl


@pytest.mark.parametrize("e2e_env", ["amqp"], indirect=True)
@pytest.mark.timeout(120)
def test_worker_survives_dropped_connections_and_loses_nothing(
    e2e_env: dict[str, str], e2e_app: App, start_worker: Callable[..., WorkerProcess], records: Path
) -> None:
    # Given a worker running a task
    worker = start_worker("-c", "2")
    running = enqueue(e2e_app, "record", "during", 1.5)
    wait_until(lambda: runs_of(records, "during") == 1, 15, "the task to start")
    # When RabbitMQ closes every connection of the vhost (worker children, supervisor, this test)
    vhost = unquote(urlsplit(e2e_env["CONVEYOR_BROKER_URL"]).path.lstrip("/"))
    rabbitmqctl("close_all_connections", "-p", vhost, "conveyor e2e: connection drop")
    # Then the running task still ends in success (RabbitMQ requeued it: it may run a second time)
    assert running.get(timeout=30) == "during"
    assert runs_of(records, "during") in (1, 2)
    # And the worker reconnects and goes on consuming
    assert [enqueue(e2e_app, "record", f"after{i}").get(timeout=30) for i in range(5)] == [
        f"after{i}" for i in range(5)
    ]
    assert worker.stop() == 0


@pytest.mark.parametrize("e2e_env", ["amqp"], indirect=True)
@pytest.mark.timeout(120)
def test_thread_pool_shares_one_connection_and_heartbeats_long_tasks(
    e2e_env: dict[str, str], e2e_app: App, start_worker: Callable[..., WorkerProcess], records: Path
) -> None:
    # Given a worker with 4 threads in one child (one AMQP connection for all of them), lease 2 s
    worker = start_worker("-c", "4", "--pool", "thread")
    # When a task runs three times longer than the lease while 30 short ones run beside it
    long = enqueue(e2e_app, "record", "long", 6.0)
    short = [enqueue(e2e_app, "record", f"s{i}", 0.1) for i in range(30)]
    # Then every task runs exactly once: the heartbeat kept the long one leased
    assert [r.get(timeout=60) for r in short] == [f"s{i}" for i in range(30)]
    assert long.get(timeout=60) == "long"
    assert runs_of(records, "long") == 1
    assert [runs_of(records, f"s{i}") for i in range(30)] == [1] * 30
    assert worker.stop() == 0


@pytest.mark.parametrize("e2e_env", ["amqp"], indirect=True)
@pytest.mark.timeout(120)
def test_status_from_another_process_sees_the_tasks_a_worker_runs(
    e2e_env: dict[str, str], e2e_app: App, start_worker: Callable[..., WorkerProcess], records: Path
) -> None:
    # Given a worker running a 4 s task
    worker = start_worker("-c", "1")
    result = enqueue(e2e_app, "record", "slow", 4.0)
    wait_until(lambda: runs_of(records, "slow") == 1, 15, "the task to start")

    def in_flight() -> int:
        return sum(s.in_flight for s in e2e_app.broker.stats())

    # Then this process (not the worker) counts it in flight while it runs, and not once it is done
    wait_until(lambda: in_flight() == 1, 10, "the running task to show in flight")
    assert result.get(timeout=30) == "slow"
    wait_until(lambda: in_flight() == 0, 10, "the finished task to leave in flight")
    assert worker.stop() == 0


@pytest.fixture
def private_node(e2e_env: dict[str, str]) -> Iterator[PrivateRabbitMQ]:
    """A RabbitMQ node of this test alone, which the test's workers and app use instead of the shared one.

    Listed before ``e2e_app`` and ``start_worker`` in a test's arguments, so they read its URL.
    """
    with private_rabbitmq() as node:
        e2e_env["CONVEYOR_BROKER_URL"] = node.url + "?prefix=cvtest-restart"
        yield node


@pytest.mark.slow
@pytest.mark.parametrize("e2e_env", ["amqp"], indirect=True)
@pytest.mark.timeout(240)  # booting the private node takes seconds of a loaded machine
def test_worker_survives_a_rabbitmq_restart_and_producers_get_a_clear_error_meanwhile(
    private_node: PrivateRabbitMQ,
    e2e_env: dict[str, str],
    e2e_app: App,
    start_worker: Callable[..., WorkerProcess],
    records: Path,
) -> None:
    # Given a worker running a task, with 20 more waiting (durable queues, persistent messages)
    worker = start_worker("-c", "1")
    running = enqueue(e2e_app, "record", "during", 1.0)
    waiting = [enqueue(e2e_app, "record", f"w{i}") for i in range(20)]
    wait_until(lambda: runs_of(records, "during") == 1, 15, "the task to start")
    try:
        # When the RabbitMQ application stops (the node restarts its broker: every connection drops)
        private_node.stop_app()
        # Then a producer is told so clearly, after its bounded retry, rather than hanging
        with pytest.raises(BrokerUnavailable):
            enqueue(e2e_app, "record", "while-down")
    finally:
        private_node.start_app()  # waits until it accepts connections again
    # And once it is back, the worker reconnects by itself and every task completes; nothing was lost
    assert running.get(timeout=60) == "during"
    assert [r.get(timeout=60) for r in waiting] == [f"w{i}" for i in range(20)]
    assert runs_of(records, "while-down") == 0
    assert enqueue(e2e_app, "record", "after").get(timeout=30) == "after"
    assert worker.stop() == 0


def _received_packets(vhost: str, ports: set[int]) -> dict[str, int]:
    """Packets RabbitMQ received on each connection of ``vhost`` from one of the local ``ports`` (read live)."""
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "-p", vhost, "peer_port", "recv_cnt", "--no-table-headers"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    rows = [line.split("\t") for line in out.splitlines() if "\t" in line]
    return {port: int(count) for port, count in rows if int(port) in ports}


#: Erlang run by ``rabbitmqctl eval``: the packets RabbitMQ received on each connection of vhost VHOST over
#: MS milliseconds, as "PORT:COUNT " pairs (peer port, packets). Both counts are read inside the node, so the
#: window is exact: ``rabbitmqctl`` itself takes seconds to start on a loaded machine, before the window.
_PACKETS_OVER = (
    'Vhost = <<"VHOST">>, '
    "Read = fun() -> maps:from_list([{proplists:get_value(peer_port, I), proplists:get_value(recv_cnt, I)} "
    "|| I <- rabbit_networking:connection_info_all([vhost, peer_port, recv_cnt]), "
    "proplists:get_value(vhost, I) =:= Vhost]) end, "
    "A = Read(), timer:sleep(MS), B = Read(), "
    'lists:flatten([io_lib:format("~b:~b ", [P, N - maps:get(P, A, 0)]) || {P, N} <- maps:to_list(B)]).'
)


def _packets_over(vhost: str, ports: set[int], seconds: float) -> dict[str, int]:
    """Packets RabbitMQ received over exactly ``seconds`` on each connection of ``vhost`` from one of ``ports``.

    Two :func:`_received_packets` reads around a sleep span the sleep plus up to two ``rabbitmqctl`` runs
    (each read happens somewhere in a run, 2.1-2.6 s at load 23-27): an idle quorum worker (about 76 packets a second)
    showed 272-330 packets "in 3 s" and failed a bound of 270.
    """
    code = _PACKETS_OVER.replace("VHOST", vhost).replace("MS", str(round(seconds * 1000)))
    out = subprocess.run(
        ["rabbitmqctl", "-q", "eval", code], check=True, capture_output=True, text=True, timeout=60 + seconds
    ).stdout
    pairs = [item.split(":") for item in out.strip().strip('"').split()]
    return {port: int(count) for port, count in pairs if int(port) in ports}


def _worker_ports(pid: int, server_port: int) -> set[int]:
    """Local ports of the TCP connections to RabbitMQ of a worker's processes (supervisor and children)."""
    root = psutil.Process(pid)
    ports = set()
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            ports |= {c.laddr.port for c in proc.net_connections(kind="tcp") if c.raddr and c.raddr.port == server_port}
    return ports


def warmed_idle_worker(
    pool_name: str, e2e_env: dict[str, str], e2e_app: App, start_worker: Callable[..., WorkerProcess]
) -> tuple[WorkerProcess, str, set[int]]:
    """A worker that ran a task and a countdown (its queues consumed, its .eta promoter connected), now
    idle; with its vhost and the local ports of its RabbitMQ connections, for :func:`_received_packets`."""
    e2e_env["PYTHONFAULTHANDLER"] = "1"  # SIGABRT makes a stuck child print every thread's stack (see below)
    worker = start_worker("-c", "2", "--pool", pool_name)
    url = urlsplit(e2e_env["CONVEYOR_BROKER_URL"])
    vhost = unquote(url.path.lstrip("/"))
    first = enqueue(e2e_app, "record", "warm", 0)
    try:
        assert first.get(timeout=30) == "warm"
    except ResultTimeout as exc:  # seen once in CI (quorum queues, thread pool): say where the task was
        raise AssertionError(_stuck_worker_report(worker, vhost)) from exc
    assert enqueue(e2e_app, "record", "late", 0, countdown=0.3).get(timeout=30) == "late"
    return worker, vhost, _worker_ports(worker.pid, url.port or 5672)


def _stuck_worker_report(worker: WorkerProcess, vhost: str) -> str:
    """The queues of ``vhost`` (ready and unacknowledged counts) and the worker's log, after SIGABRT to its
    children: with PYTHONFAULTHANDLER set, each prints every thread's stack there as it dies."""
    queues = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "messages_ready", "messages_unacknowledged"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    for child in psutil.Process(worker.pid).children():
        with contextlib.suppress(psutil.Error):
            child.send_signal(signal.SIGABRT)
    time.sleep(2.0)  # the stacks reach the log
    return f"the worker's first task did not run within 30 s; queues of {vhost}:\n{queues}\nlog:\n{worker.output()}"


@pytest.mark.parametrize("e2e_env", ["amqp"], indirect=True)
@pytest.mark.parametrize("pool_name", ["process", "thread"])
@pytest.mark.timeout(120)
def test_an_idle_worker_sends_rabbitmq_nothing_but_heartbeats(
    pool_name: str, e2e_env: dict[str, str], e2e_app: App, start_worker: Callable[..., WorkerProcess]
) -> None:
    # Given a worker that ran a countdown task (its queues consumed, its .eta promoter connected) and is idle
    worker, vhost, ports = warmed_idle_worker(pool_name, e2e_env, e2e_app, start_worker)
    # The last acks, window changes and counts settle (a loaded machine may take seconds): a quiet second
    settled, before = time.monotonic() + 15, _received_packets(vhost, ports)
    while time.monotonic() < settled:
        time.sleep(1.0)
        before, previous = _received_packets(vhost, ports), before
        if before == previous:
            break
    # When 3 seconds pass with nothing to do
    time.sleep(3.0)
    after = _received_packets(vhost, ports)
    # Then RabbitMQ received at most an AMQP heartbeat on each connection (it used to get a basic.get every 50 ms)
    assert len(after) >= 2, after  # at least a child's own connection and its promoter's
    grown = {name: after[name] - before.get(name, 0) for name in after}
    assert {name: packets for name, packets in grown.items() if packets > 1} == {}
    # And it still takes work at once
    assert enqueue(e2e_app, "record", "after", 0).get(timeout=30) == "after"
    assert worker.stop() == 0
