"""Peak resident memory of the workers' whole process trees, sampled while a workload runs, and CPU profiles.

A worker is often a supervisor with children (conveyor, Celery, Dramatiq), so the figure is the
sum of the RSS of every process under each worker the driver started, sampled every
:data:`INTERVAL` seconds on a thread, and the peak of that sum is kept. A sum of RSS counts pages
that forked children share with their parent once per process: it overstates a forking worker a
little, never understates one. Runs in the driver process (any peer venv has psutil).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import psutil
import redis

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


def redis_cpu_seconds(client: redis.Redis) -> float:
    """CPU seconds (user + system) the Redis server has used since it started (``INFO cpu``)."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


class CpuSampler:
    """Samples the CPU seconds of the workers, the Redis server and the machine on a thread until :meth:`stop`.

    :meth:`percent` then gives each one's CPU in % of one core over a window of the run (the steady
    drain, say): the profile that names a scaling ceiling (the broker near 100 %, or the machine's cores).
    """

    def __init__(self, pids: list[int], redis_url: str, interval: float = 0.2) -> None:
        self.pids = pids
        self.interval = interval
        # (perf_counter, workers' CPU s, broker CPU s, busy CPU s of the whole machine)
        self.samples: list[tuple[float, float, float, float]] = []
        self._client = redis.Redis.from_url(redis_url)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-cpu", daemon=True)

    def start(self) -> CpuSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(5)
        self._client.close()

    def percent(self, start: float, end: float) -> tuple[float, float, float]:
        """(workers', broker's, whole machine's) CPU in % of one core between the samples nearest ``start``, ``end``."""
        if len(self.samples) < 2:
            return 0.0, 0.0, 0.0
        first = min(self.samples, key=lambda s: abs(s[0] - start))
        last = min(self.samples, key=lambda s: abs(s[0] - end))
        span = last[0] - first[0]
        if span <= 0:
            first, last = self.samples[0], self.samples[-1]
            span = last[0] - first[0]
        workers, broker, machine = (100 * (last[i] - first[i]) / span for i in (1, 2, 3))
        return workers, broker, machine

    def _run(self) -> None:
        while True:
            with contextlib.suppress(redis.RedisError, psutil.Error):
                now = time.perf_counter()
                busy = psutil.cpu_times()
                machine = sum(busy) - busy.idle - getattr(busy, "iowait", 0.0) - getattr(busy, "guest", 0.0)
                machine -= getattr(busy, "guest_nice", 0.0)  # guest time is counted in user time already
                sample = (now, tree_cpu_seconds(self.pids), redis_cpu_seconds(self._client), machine)
                self.samples.append(sample)
            if self._stopped.wait(self.interval):
                return
