"""Peak resident memory of the workers' whole process trees, sampled while a workload runs, and their CPU time.

A worker is often a supervisor with children (conveyor, Celery, Dramatiq), so the figure is the
sum of the RSS of every process under each worker the driver started, sampled every
:data:`INTERVAL` seconds on a thread, and the peak of that sum is kept. A sum of RSS counts pages
that forked children share with their parent once per process: it overstates a forking worker a
little, never understates one. Runs in the driver process (any peer venv has psutil).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import psutil

#: Seconds between two samples (each reads /proc for every process in the trees).
INTERVAL = 0.1


def _tree(pids: list[int]) -> Iterator[psutil.Process]:
    """The processes ``pids`` and all their descendants that are alive now."""
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
        yield from procs


def tree_rss(pids: list[int]) -> int:
    """Bytes resident in the processes ``pids`` and all their descendants, now."""
    total = 0
    for proc in _tree(pids):
        with contextlib.suppress(psutil.Error):  # a child that exited between the listing and the read
            total += proc.memory_info().rss
    return total


def tree_cpu_seconds(pids: list[int]) -> float:
    """CPU seconds (user + system) used so far by the live processes ``pids`` and all their descendants.

    Unlike a rate, this moves less with the machine's load (cache and scheduling effects, and the
    reserve round trips of a starved worker, still do), so the difference between two configurations
    of one system prices a per-task cost.
    """
    total = 0.0
    for proc in _tree(pids):
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


class PeakSampler:
    """Samples :func:`tree_rss` of the given roots on a thread until :meth:`stop`; keeps the peak."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.peak = 0
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-rss", daemon=True)

    def start(self) -> PeakSampler:
        self._thread.start()
        return self

    def stop(self) -> int:
        """Stop sampling and return the peak in bytes (the last sample is at most INTERVAL old)."""
        self._stopped.set()
        self._thread.join(5)
        return self.peak

    def _run(self) -> None:
        while True:
            self.peak = max(self.peak, tree_rss(self.pids))
            if self._stopped.wait(INTERVAL):
                return
