"""The partition test's task (``tests/e2e/test_partition.py``), on the e2e app: ``tests.apps.partition_app:app``.

``hop(i, sleep, rerun_sleep)`` appends ``time i pid start`` to ``<host>.log`` in ``E2E_RECORD_DIR``
when a run starts and ``time i pid done`` when it ends (one ``O_APPEND`` write each), and returns the
host that ran it, so the test can tell which run's result the backend kept. ``PARTITION_HOST`` names
the host. A run of a task that started before (on any host: a rerun) sleeps ``rerun_sleep`` instead,
so the test can heal the cut host while the reruns still hold their messages; ``PARTITION_SLEEP``, when
set, replaces ``sleep`` on that host (the host the test will cut runs its tasks for longer).
"""

from __future__ import annotations

import os
import time

from tests.apps.e2e_app import _record_dir, app

__all__ = ["app"]


def _log(host: str, line: str) -> None:
    fd = os.open(_record_dir() / f"{host}.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{time.time():.6f} {line}\n".encode())
    finally:
        os.close(fd)


def _started_before(i: int) -> bool:
    for path in _record_dir().glob("*.log"):
        if any(line.split()[1:2] == [str(i)] for line in path.read_text().splitlines()):
            return True
    return False


@app.task(name="hop")
def hop(i: int, sleep: float, rerun_sleep: float) -> str:
    """Note the start, sleep ``sleep`` seconds (``rerun_sleep`` on a rerun), note the end; return the host's name."""
    host = os.environ["PARTITION_HOST"]
    rerun = _started_before(i)
    _log(host, f"{i} {os.getpid()} start")
    time.sleep(rerun_sleep if rerun else float(os.environ.get("PARTITION_SLEEP", sleep)))
    _log(host, f"{i} {os.getpid()} done")
    return host
