"""The kill -9 suite's worker tests on Redis Sentinel and Redis Cluster: real ``conveyor worker`` processes.

A child killed mid-task, and a whole worker killed (its task runs again after the lease), on the
process pool; the tests are tests/e2e/test_worker.py's own, with ``e2e_env`` narrowed to the HA kinds.
"""

from tests.e2e.test_worker import (
    test_kill_9_of_a_child_mid_task_loses_nothing,
    test_kill_9_of_the_whole_worker_redelivers_after_the_lease,
)

__all__ = [
    "test_kill_9_of_a_child_mid_task_loses_nothing",
    "test_kill_9_of_the_whole_worker_redelivers_after_the_lease",
]
