"""The Redis HA suite: the conformance classes again, over Redis Sentinel and Redis Cluster.

Each test process starts one private Sentinel group (master, replica, three sentinels) and one
private 3-master Redis Cluster at first use (``tests/ha_servers.py``), shared by its tests through a
key prefix each, and kills them at its end. The kinds ``redis-sentinel`` and ``redis-cluster`` are
this folder's alone: ``broker_kind``, ``backend`` and ``e2e_env`` are narrowed to them here, so the
imported test modules run on these two topologies only (the main suite runs them on the others).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.backends import ResultBackend
from conveyor.backends import from_url as backend_from_url
from tests.conftest import url_for
from tests.e2e.conftest import e2e_app, records, start_worker  # the worker fixtures, over the HA URLs below

__all__ = ["HA_KINDS", "e2e_app", "records", "start_worker"]

HA_KINDS = ["redis-sentinel", "redis-cluster"]


@pytest.fixture(params=HA_KINDS)
def broker_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture(params=HA_KINDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ResultBackend]:
    instance = backend_from_url(url_for(request.param, tmp_path, request))
    yield instance
    instance.close()


@pytest.fixture(params=HA_KINDS)
def e2e_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment for a worker and for the test's app on one HA topology (tests/e2e/conftest.py's worker_env)."""
    from tests.e2e.conftest import worker_env

    yield worker_env(request.param, tmp_path, request)


@pytest.fixture(params=["process"])
def pool(request: pytest.FixtureRequest) -> str:
    """The process pool only: a pool's code is the same on every broker (tests/e2e runs the others on Redis)."""
    param: str = request.param
    return param
