"""The broker, backend, executor and async conformance suites on Redis Sentinel and Redis Cluster.

The tests are the conformance modules' own, imported here; this folder's conftest narrows their
``broker_kind`` and ``backend`` fixtures to ``redis-sentinel`` and ``redis-cluster``.
"""

from tests.conformance.test_async_api import *  # noqa: F403
from tests.conformance.test_backend import *  # noqa: F403
from tests.conformance.test_broker import *  # noqa: F403
from tests.conformance.test_executor import *  # noqa: F403
