"""Real workers on RabbitMQ quorum queues (``queue_type=quorum``): kill -9 of a child and of a whole worker,
and what an idle worker costs (it polls: quorum queues refuse the channel-wide basic.qos of push consumption).

The kill -9 tests are tests/e2e/test_worker.py's, run here on the ``amqp-quorum`` kind, on the process and
thread pools. docs/amqp.md, "Quorum queues".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conveyor import App
from tests.e2e import test_worker as worker_suite
from tests.e2e.conftest import WorkerProcess, enqueue
from tests.e2e.test_amqp_worker import _packets_over, warmed_idle_worker

quorum = pytest.mark.parametrize("e2e_env", ["amqp-quorum"], indirect=True)
pools = pytest.mark.parametrize("quorum_pool", ["process", "thread"])


@quorum
@pools
@pytest.mark.timeout(120)
def test_kill_9_of_a_child_mid_task_loses_nothing_on_quorum_queues(
    e2e_env: dict[str, str], e2e_app: App, start_worker: Callable[..., WorkerProcess], records: Path, quorum_pool: str
) -> None:
    assert "queue_type=quorum" in e2e_env["CONVEYOR_BROKER_URL"]
    worker_suite.test_kill_9_of_a_child_mid_task_loses_nothing(e2e_app, start_worker, records, quorum_pool)


@quorum
@pools
@pytest.mark.timeout(120)
def test_kill_9_of_the_whole_worker_redelivers_on_quorum_queues(
    e2e_env: dict[str, str], e2e_app: App, start_worker: Callable[..., WorkerProcess], records: Path, quorum_pool: str
) -> None:
    worker_suite.test_kill_9_of_the_whole_worker_redelivers_after_the_lease(e2e_app, start_worker, records, quorum_pool)


@quorum
@pytest.mark.timeout(120)
def test_worker_runs_tasks_and_countdowns_on_quorum_queues(
    e2e_env: dict[str, str], e2e_app: App, start_worker: Callable[..., WorkerProcess], records: Path
) -> None:
    worker_suite.test_worker_runs_tasks_keeps_serving_after_one_explodes_and_its_heartbeat_counts_them(
        e2e_app, start_worker, records, "process"
    )


#: Seconds an idle quorum worker is watched, and the most packets one of its connections may send
#: RabbitMQ meanwhile: a child's reserver (one per child, whatever its slots) looks at its queue
#: every POLL_MAX (50 ms) once idle, three basic.gets a look (one per priority band): 60 a second
#: (measured 228-234 packets in 3 s plus two rabbitmqctl runs; 85-139 in exactly 3 s at load 25, whose
#: sleeps overrun), plus AMQP heartbeats.
IDLE_SECONDS = 3.0
MAX_PACKETS = int(IDLE_SECONDS * 30 * 3)


@quorum
@pytest.mark.parametrize("pool_name", ["process", "thread"])
@pytest.mark.timeout(120)
def test_an_idle_worker_on_quorum_queues_polls_about_twenty_times_a_second_per_child(
    pool_name: str, e2e_env: dict[str, str], e2e_app: App, start_worker: Callable[..., WorkerProcess]
) -> None:
    # Given an idle worker on quorum queues that ran a task and a countdown
    worker, vhost, ports = warmed_idle_worker(pool_name, e2e_env, e2e_app, start_worker)
    time.sleep(1.0)  # its polls back off to the longest pause
    # When 3 seconds pass with nothing to do
    grown = _packets_over(vhost, ports, IDLE_SECONDS)
    # Then each child's connection polls, a bounded number of packets (one reserver per child), and
    # the promoters' connections send only heartbeats
    assert max(grown.values()) > IDLE_SECONDS * 5, grown  # it does poll (this is the documented cost)
    assert max(grown.values()) <= MAX_PACKETS, grown
    assert min(grown.values()) <= 1, grown  # a promoter connection: heartbeats only
    print(f"idle quorum worker, {pool_name} pool, packets per connection over {IDLE_SECONDS:g} s: {grown}")
    # And it still takes work at once
    assert enqueue(e2e_app, "record", "after", 0).get(timeout=30) == "after"
    assert worker.stop() == 0
