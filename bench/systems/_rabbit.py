"""A RabbitMQ vhost of one benchmark run (``rabbitmqctl``), so runs never see each other's queues.

Standard library only: the conveyor and Celery drivers both use it, each in its own venv.
``BENCH_AMQP_URL`` names the server (default ``amqp://guest:guest@127.0.0.1:5672``, user guest).
``BENCH_AMQP_QUEUE_VERSION=2`` makes every classic queue of the run's vhost a version-2 classic queue (a
``queue-version`` policy on the vhost, for every system alike; docs/amqp.md, "What one delay() waits for").
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from urllib.parse import quote, urlsplit

#: Environment variable naming the RabbitMQ server (no vhost) of the ``amqp`` variants.
AMQP_URL_ENV = "BENCH_AMQP_URL"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672"
#: Environment variable: ``2`` puts a ``queue-version: 2`` policy on each run's vhost (unset: the server's default).
QUEUE_VERSION_ENV = "BENCH_AMQP_QUEUE_VERSION"


def _ctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


class Vhost:
    """A fresh vhost for one run; :meth:`delete` removes it with every queue in it."""

    def __init__(self, label: str) -> None:
        server = os.environ.get(AMQP_URL_ENV, DEFAULT_AMQP_URL).rstrip("/")
        self.name = f"bench-{label}-{uuid.uuid4().hex[:8]}"
        _ctl("add_vhost", self.name)
        _ctl("set_permissions", "-p", self.name, urlsplit(server).username or "guest", ".*", ".*", ".*")
        version = os.environ.get(QUEUE_VERSION_ENV)
        if version:
            policy = f'{{"queue-version": {int(version)}}}'
            _ctl("set_policy", "-p", self.name, "--apply-to", "queues", "queue-version", ".*", policy)
        self.url = f"{server}/{quote(self.name, safe='')}"

    def delete(self) -> None:
        """Delete the vhost (idempotent)."""
        with contextlib.suppress(subprocess.CalledProcessError):
            _ctl("delete_vhost", self.name)
