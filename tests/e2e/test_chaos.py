"""The chaos test: kill -9 children and whole workers while 2,500 tasks run; nothing lost, no unexplained rerun.

The driver and the audit live in ``tests/chaos.py``, which also runs as a script with bigger numbers
(``python -m tests.chaos --broker redis --tasks 20000 --seconds 120``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos import ChaosPlan, audit, run_chaos


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_kill_9_storm_loses_no_task_and_reruns_only_killed_ones(e2e_env: dict[str, str], tmp_path: Path) -> None:
    # Given 2,500 tasks of 1-5 ms, two workers of two children each, a 2 s lease
    plan = ChaosPlan(tasks=2500, seconds=40, settle=40, pause=(0.03, 0.15), seed=4)
    # When a driver kill -9s a child every 30-150 ms, and every fifth time a whole worker (restarting it)
    report = run_chaos(e2e_env["CONVEYOR_BROKER_URL"], tmp_path, plan, backend=e2e_env.get("CONVEYOR_BACKEND_URL"))
    print(report.summary())
    # Then every task completed, and every extra execution followed a run in a killed process
    assert report.problems == []
    assert report.completed == 2500
    assert report.duplicates == report.explained
    assert report.executions == 2500 + report.duplicates
    # And the storm did hit: children and whole workers died mid-run
    assert report.child_kills >= 5 and report.worker_kills >= 1


def test_audit_accepts_reruns_after_kills_only() -> None:
    # Given task 0 interrupted in killed pid 10, then rerun in pid 11; task 1 run once in pid 12
    log = ["0 10", "1 12", "1 12 done", "0 11", "0 11 done"]
    # Then the audit finds one duplicate, explained by the kill
    report = audit(log, killed={10}, tasks=2)
    assert (report.executions, report.completed, report.duplicates, report.explained) == (3, 2, 1, 1)
    assert report.problems == []


def test_audit_flags_lost_tasks_unexplained_reruns_and_unexplained_interruptions() -> None:
    # Given task 0 run twice by live pids, task 1 interrupted in a live pid, task 2 never run
    log = ["0 10", "0 10 done", "0 11", "0 11 done", "1 12"]
    # Then the audit names each breach of the promise
    report = audit(log, killed=set(), tasks=3)
    assert report.duplicates == 1 and report.explained == 0
    assert sorted(report.problems) == [
        "task 0 ran again in pid 11 after a run in live pid 10",
        "task 1 never completed (1 execution(s))",
        "task 1 was interrupted in pid 12, which the driver did not kill",
        "task 2 never completed (0 execution(s))",
    ]
