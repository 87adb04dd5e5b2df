"""The chaos run's tasks (``tests/chaos.py``), registered on the e2e app: ``tests.apps.chaos_app:app``.

Every execution appends ``i pid`` to one log when it starts, ``i pid done`` when it ends, and a
poison task ``i pid crash`` just before it takes its process down. Each line is one ``O_APPEND``
write, so lines from concurrent processes never interleave.

``pid`` is the pid as the host sees it (``/proc/self`` of the host's procfs), not ``os.getpid()``:
a worker started under ``unshare --pid`` has pid 1 and children 2, 3, ... in its own namespace,
and the driver records the pids it kills as the host sees them.
"""

from __future__ import annotations

import ctypes
import os
import resource
from pathlib import Path

from tests.apps.e2e_app import CHAOS_LOG, _record_dir, app

__all__ = ["CHAOS_LOG", "app"]


def host_pid() -> int:
    """This process's pid in the host's pid namespace (``os.getpid()`` when /proc is unreadable)."""
    try:
        return int(Path("/proc/self").readlink().name)
    except (OSError, ValueError):
        return os.getpid()


def _log(line: str) -> None:
    fd = os.open(_record_dir() / CHAOS_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


def _run(i: int, sleep_ms: float) -> None:
    pid = host_pid()
    _log(f"{i} {pid}")
    libc_usleep(int(sleep_ms * 1000), hold_gil=False)
    _log(f"{i} {pid} done")


def libc_usleep(microseconds: int, *, hold_gil: bool) -> None:
    """Sleep in C; with ``hold_gil`` through ``PyDLL``, which keeps the GIL for the whole call.

    Holding the GIL starves every other thread of the process, the lease heartbeat included.
    """
    if hold_gil:
        ctypes.PyDLL(None).usleep(microseconds)
    else:
        ctypes.CDLL(None).usleep(microseconds)


@app.task(name="chaos_plain", ignore_result=True)
def chaos_plain(i: int, sleep_ms: float) -> None:
    """An ordinary short task: log start, sleep ``sleep_ms``, log done; no result stored."""
    _run(i, sleep_ms)


@app.task(name="chaos_stored")
def chaos_stored(i: int, sleep_ms: float) -> int:
    """As ``chaos_plain``, but its result (``i``) is stored: a backend outage must not lose it."""
    _run(i, sleep_ms)
    return i


@app.task(name="chaos_poison")
def chaos_poison(i: int) -> None:
    """Crash the process running it, every time: a segfault for odd ``i``, ``os._exit(70)`` for even.

    The ``crash`` line tells the audit that this pid died by the task's own hand, like a kill.
    """
    pid = host_pid()
    _log(f"{i} {pid}")
    _log(f"{i} {pid} crash")
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file for the deliberate segfault
    if i % 2:
        ctypes.string_at(0)  # read address 0: SIGSEGV
    os._exit(70)


@app.task(name="chaos_gil", ignore_result=True)
def chaos_gil(i: int, seconds: float) -> None:
    """Hold the GIL for ``seconds`` (longer than the lease) in C, then log done.

    No thread of this process runs meanwhile; a heartbeat that lives in the task's process cannot
    keep its lease, and a second worker may start it again while it still runs.
    """
    pid = host_pid()
    _log(f"{i} {pid}")
    libc_usleep(int(seconds * 1_000_000), hold_gil=True)
    _log(f"{i} {pid} done")
