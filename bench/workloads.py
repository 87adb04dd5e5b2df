"""The workloads, written once against :class:`bench.systems.base.Driver`.

The five of issue 6 (throughput, results, latency, batch, mixed) run each system with
``concurrency`` tasks at once in its default pool. The two of issue 12 are I/O-bound and choose
the worker shape themselves: ``io-threads`` (2 worker processes x 128 threads, tasks that block
20 ms) and ``io-async`` (one worker, 1000 coroutines, tasks that await 1 s).

Every workload counts completions the same way for every system: each task increments one Redis
key (:data:`bench.systems.COUNTER_KEY`), and the run is only "ok" when the counter reaches the
number of tasks sent. A counter that stops short is reported as ``dropped``; a wait past its
bound as ``timeout``. Runs in the driver process (any venv): standard library and redis-py only.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import redis

from bench.memory import CpuSampler, PeakSampler, tree_cpu_seconds
from bench.systems import (
    ADELAY,
    AIO_WAIT_SECONDS,
    COUNTER_KEY,
    IO_ASYNC,
    IO_BLOCK_SECONDS,
    IO_THREADS,
    SLEEP_SECONDS,
    WEB,
    WORKFLOWS,
)
from bench.systems.base import Driver

#: How often the counter is read while waiting (a busier poll would steal CPU from the workers).
POLL_SECONDS = 0.005
#: Every n-th task of the mixed workload sleeps (1 %).
SLEEPY_EVERY = 100

WORKLOADS = ("throughput", "results", "latency", "batch", "mixed", IO_THREADS, IO_ASYNC, *WORKFLOWS, WEB, ADELAY)
#: Times the chain workload sends its chain (one after another) for its latency figures.
CHAIN_REPEATS = 50


@dataclasses.dataclass
class Limits:
    """Bounds on every wait, so a broken system cannot hang the run.

    Attributes:
        deadline: ``time.monotonic()`` value after which the run gives up (TIMEOUT).
        startup: seconds the workers get to run their first task.
        stall: seconds without progress after which the missing tasks count as dropped.
    """

    deadline: float
    startup: float = 60.0
    stall: float = 20.0

    def left(self) -> float:
        return self.deadline - time.monotonic()


@dataclasses.dataclass
class Outcome:
    """What one run of one workload measured.

    Attributes:
        status: ``ok``, ``dropped``, ``timeout``, ``error`` or ``unavailable``.
        figures: name -> value (rates in tasks/s, times in s, latencies in ms).
        detail: for a status other than ok, what happened (e.g. ``DROPPED 12`` or a traceback line).
    """

    status: str = "ok"
    figures: dict[str, float] = dataclasses.field(default_factory=dict)
    detail: str = ""


class Failed(Exception):
    """A workload stopped early; carries the status and detail to report."""

    def __init__(self, status: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class Counter:
    """The completion counter, read by the driver."""

    def __init__(self, url: str) -> None:
        self.redis = redis.Redis.from_url(url)

    def reset(self) -> None:
        self.redis.delete(COUNTER_KEY)

    def value(self) -> int:
        raw = self.redis.get(COUNTER_KEY)
        return int(raw) if raw is not None else 0

    def close(self) -> None:
        self.redis.close()


@dataclasses.dataclass
class Drain:
    """When the counter first moved and when it reached its target.

    Attributes:
        first: ``time.perf_counter()`` when the counter was first seen above 0.
        done: when it was first seen at its target.
        at_10pct: when it was first seen at or past 10 % of the target (for the steady rate).
        at_90pct: when it was first seen at or past 90 %.
    """

    first: float
    done: float
    at_10pct: float = 0.0
    at_90pct: float = 0.0

    def steady_rate(self, target: int) -> float:
        """Tasks per second between 10 % and 90 % done: the rate without the start-up and the tail."""
        span = self.at_90pct - self.at_10pct
        return 0.8 * target / span if span > 0 else 0.0


def wait_for_count(counter: Counter, target: int, spawned: float, limits: Limits, driver: Driver) -> Drain:
    """Poll the counter until it reaches ``target``.

    Raises:
        Failed: no task ran within ``limits.startup`` (timeout, or error if the workers died),
            the counter stopped short for ``limits.stall`` seconds (dropped), or the deadline passed.
    """
    first: float | None = None
    marks: dict[float, float] = {}  # fraction of the target -> when it was first reached
    last, last_change = 0, time.perf_counter()
    while True:
        value = counter.value()
        now = time.perf_counter()
        if value and first is None:
            first = now
        for fraction in (0.1, 0.9):
            if fraction not in marks and value >= fraction * target:
                marks[fraction] = now
        if value >= target:
            assert first is not None
            if value > target:
                raise Failed("error", f"DUPLICATES {value - target}: the counter passed {target}")
            return Drain(first, now, marks[0.1], marks[0.9])
        if value != last:
            last, last_change = value, now
        if first is None and not driver.workers_alive():
            raise Failed("error", "the workers exited before running a task (see the worker log)")
        if first is None and now - spawned > limits.startup:
            raise Failed("timeout", f"TIMEOUT: no task ran within {limits.startup:.0f} s of starting the workers")
        if first is not None and now - last_change > limits.stall:
            raise Failed("dropped", f"DROPPED {target - value}: the counter stayed at {value} for {limits.stall:.0f} s")
        if limits.left() <= 0:
            raise Failed("timeout", f"TIMEOUT: {value} of {target} done when the run's time ran out")
        time.sleep(POLL_SECONDS)


def _check_deadline(limits: Limits, done: int, total: int, what: str) -> None:
    if limits.left() <= 0:
        raise Failed("timeout", f"TIMEOUT: {what} {done} of {total} when the run's time ran out")


def _enqueue_loop(driver: Driver, limits: Limits, kinds: list[str]) -> tuple[list[Any], float]:
    """Enqueue one task per entry, one call each; return the handles and the seconds it took."""
    handles = []
    start = time.perf_counter()
    for i, kind in enumerate(kinds):
        handles.append(driver.enqueue_one(kind, i))
        if i % 256 == 0:
            _check_deadline(limits, i, len(kinds), "enqueued")
    return handles, time.perf_counter() - start


def _start_and_drain(driver: Driver, counter: Counter, n: int, limits: Limits) -> tuple[float, Drain]:
    spawned = time.perf_counter()
    driver.start_workers()
    drain = wait_for_count(counter, n, spawned, limits, driver)
    return spawned, drain


def _warm_up(driver: Driver, counter: Counter, limits: Limits) -> None:
    """Start the workers and wait until each slot has run a task, then zero the counter."""
    driver.start_workers()
    warm = [driver.enqueue_one("echo", -1 - i) for i in range(2 * driver.config.concurrency)]
    for handle in warm:
        try:
            driver.wait_result(handle, min(limits.startup, max(1.0, limits.left())))
        except TimeoutError:
            state = "exited" if not driver.workers_alive() else "are running"
            raise Failed("timeout", f"TIMEOUT: warm-up task got no result (the workers {state})") from None
    time.sleep(0.2)  # let the other processes finish their own start-up work
    counter.reset()


def throughput(driver: Driver, counter: Counter, n: int, limits: Limits, batch_size: int) -> Outcome:
    """Workload 1: enqueue n no-op tasks with the workers stopped, then start them and drain."""
    _, enqueue_s = _enqueue_loop(driver, limits, ["noop"] * n)
    spawned, drain = _start_and_drain(driver, counter, n, limits)
    cpu = tree_cpu_seconds(driver.worker_pids())  # start-up included: the same for a system's two log levels
    return Outcome(
        figures={
            "enqueue_rate": n / enqueue_s,
            "startup_s": drain.first - spawned,
            "processed_rate": (n - 1) / max(drain.done - drain.first, 1e-9),
            "cpu_us_per_task": cpu / n * 1e6,
        }
    )


def _collect(driver: Driver, handles: list[Any], limits: Limits) -> None:
    for i, handle in enumerate(handles):
        try:
            value = driver.wait_result(handle, max(1.0, limits.left()))
        except TimeoutError:
            raise Failed("timeout", f"TIMEOUT: {i} of {len(handles)} results collected") from None
        if value != i:
            raise Failed("error", f"WRONG RESULT: task {i} returned {value!r}")


def results(driver: Driver, counter: Counter, n: int, limits: Limits, batch_size: int) -> Outcome:
    """Workload 2: with warm workers, enqueue n tasks that return a value, then collect every result."""
    _warm_up(driver, counter, limits)
    start = time.perf_counter()
    handles, enqueue_s = _enqueue_loop(driver, limits, ["echo"] * n)
    _collect(driver, handles, limits)
    total = time.perf_counter() - start
    _check_count(counter, n)
    return Outcome(figures={"enqueue_rate": n / enqueue_s, "rate": n / total})


def latency(driver: Driver, counter: Counter, n: int, limits: Limits, batch_size: int) -> Outcome:
    """Workload 3: idle warm workers, one task at a time: enqueue, wait for its result; n times."""
    _warm_up(driver, counter, limits)
    samples: list[float] = []
    for i in range(n):
        start = time.perf_counter()
        handle = driver.enqueue_one("echo", i)
        try:
            value = driver.wait_result(handle, max(1.0, min(30.0, limits.left())))
        except TimeoutError:
            raise Failed("timeout", f"TIMEOUT: round trip {i} of {n} got no result") from None
        samples.append(time.perf_counter() - start)
        if value != i:
            raise Failed("error", f"WRONG RESULT: task {i} returned {value!r}")
    _check_count(counter, n)
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return Outcome(
        figures={
            "p50_ms": cuts[49] * 1000,
            "p90_ms": cuts[89] * 1000,
            "p99_ms": cuts[98] * 1000,
            "mean_ms": statistics.fmean(samples) * 1000,
        }
    )


def batch(driver: Driver, counter: Counter, n: int, limits: Limits, batch_size: int) -> Outcome:
    """Workload 4: enqueue n no-op tasks through the batch API in chunks, then drain them to check."""
    start = time.perf_counter()
    for first in range(0, n, batch_size):
        driver.enqueue_batch("noop", range(first, min(n, first + batch_size)))
        _check_deadline(limits, first, n, "enqueued")
    enqueue_s = time.perf_counter() - start
    spawned, drain = _start_and_drain(driver, counter, n, limits)
    return Outcome(
        figures={
            "batch_rate": n / enqueue_s,
            "startup_s": drain.first - spawned,
            "processed_rate": (n - 1) / max(drain.done - drain.first, 1e-9),
        }
    )


def mixed(driver: Driver, counter: Counter, n: int, limits: Limits, batch_size: int) -> Outcome:
    """Workload 5: 1 % of the tasks sleep 1 s, the rest are no-ops; time from first to last completion."""
    kinds = ["sleepy" if i % SLEEPY_EVERY == SLEEPY_EVERY - 1 else "noop" for i in range(n)]
    _enqueue_loop(driver, limits, kinds)
    stall = Limits(limits.deadline, limits.startup, max(limits.stall, 3 * SLEEP_SECONDS))
    spawned, drain = _start_and_drain(driver, counter, n, stall)
    sleepers = kinds.count("sleepy")
    return Outcome(
        figures={
            "drain_s": drain.done - drain.first,
            "startup_s": drain.first - spawned,
            "floor_s": sleepers * SLEEP_SECONDS / driver.config.concurrency,
        }
    )


def _enqueue_chunks(driver: Driver, kind: str, n: int, batch_size: int, limits: Limits) -> None:
    """Enqueue n tasks of ``kind`` through the batch API (not timed: the I/O workloads time the workers)."""
    for first in range(0, n, batch_size):
        driver.enqueue_batch(kind, range(first, min(n, first + batch_size)))
        _check_deadline(limits, first, n, "enqueued")


def _drain_sampled(
    driver: Driver, counter: Counter, n: int, limits: Limits, cpu: bool = False
) -> tuple[float, Drain, int, tuple[float, float, float]]:
    """Start the workers and drain n tasks while sampling their memory (and with ``cpu``, the CPU profile).

    Returns (spawned, drain, peak RSS bytes, (workers', broker's, whole machine's busy) CPU in % of one
    core over the steady 10-90 % window; zeros without ``cpu``).
    """
    spawned = time.perf_counter()
    driver.start_workers()
    sampler = PeakSampler(driver.worker_pids()).start()
    profile = CpuSampler(driver.worker_pids(), driver.config.redis_url).start() if cpu else None
    try:
        drain = wait_for_count(counter, n, spawned, limits, driver)
    finally:
        peak = sampler.stop()
        if profile is not None:
            profile.stop()
    percent = profile.percent(drain.at_10pct, drain.at_90pct) if profile is not None else (0.0, 0.0, 0.0)
    return spawned, drain, peak, percent


def io_threads(driver: Driver, counter: Counter, n: int, limits: Limits, batch_size: int) -> Outcome:
    """Workload 6: n tasks that block 20 ms (then count), queued; then 2 workers x 128 threads drain them."""
    _enqueue_chunks(driver, "io", n, batch_size, limits)
    spawned, drain, peak, (workers_cpu, broker_cpu, machine_cpu) = _drain_sampled(driver, counter, n, limits, cpu=True)
    slots = driver.config.workers * driver.config.slots
    return Outcome(
        figures={
            "processed_rate": (n - 1) / max(drain.done - drain.first, 1e-9),
            "steady_rate": drain.steady_rate(n),
            "ceiling_rate": slots / IO_BLOCK_SECONDS,
            "startup_s": drain.first - spawned,
            "peak_rss_mb": peak / 2**20,
            "workers_cpu_pct": workers_cpu,
            "broker_cpu_pct": broker_cpu,
            "machine_cpu_pct": machine_cpu,
        }
    )


def io_async(driver: Driver, counter: Counter, n: int, limits: Limits, batch_size: int) -> Outcome:
    """Workload 7: n tasks that await 1 s (then count), queued; then one worker with 1000 slots drains them.

    The first task began its wait at the latest 1 s before the first completion, so the drain is
    timed from ``first completion - 1 s`` to the last completion; its floor is
    ``ceil(n / slots)`` waits of 1 s.
    """
    _enqueue_chunks(driver, "aio", n, batch_size, limits)
    stall = Limits(limits.deadline, limits.startup, max(limits.stall, 3 * AIO_WAIT_SECONDS))
    spawned, drain, peak, _ = _drain_sampled(driver, counter, n, stall)
    began = drain.first - AIO_WAIT_SECONDS
    return Outcome(
        figures={
            "drain_s": drain.done - began,
            "floor_s": math.ceil(n / (driver.config.workers * driver.config.slots)) * AIO_WAIT_SECONDS,
            "startup_s": max(0.0, began - spawned),
            "peak_rss_mb": peak / 2**20,
        }
    )


def _workflow_result(driver: Driver, shape: str, n: int, limits: Limits) -> tuple[Any, float]:
    """Send one workflow and wait for its result; return it and the seconds from send to result."""
    start = time.perf_counter()
    handle = driver.enqueue_workflow(shape, n)
    try:
        value = driver.wait_result(handle, max(1.0, limits.left()))
    except TimeoutError:
        raise Failed("timeout", f"TIMEOUT: the {shape} of {n} gave no result") from None
    return value, time.perf_counter() - start


def chord(driver: Driver, counter: Counter, n: int, limits: Limits, batch_size: int) -> Outcome:
    """Workload 8: warm workers; a chord of n echo members whose body sums them: send -> the body's result."""
    _warm_up(driver, counter, limits)
    value, took = _workflow_result(driver, "chord", n, limits)
    if value != sum(range(n)):
        raise Failed("error", f"WRONG RESULT: the chord's body returned {value!r}")
    _check_count(counter, n)
    return Outcome(figures={"total_s": took})


def group(driver: Driver, counter: Counter, n: int, limits: Limits, batch_size: int) -> Outcome:
    """Workload 9: warm workers; a group of n echo tasks: send -> every result, in order."""
    _warm_up(driver, counter, limits)
    value, took = _workflow_result(driver, "group", n, limits)
    if list(value) != list(range(n)):
        raise Failed("error", "WRONG RESULT: the group's results are not 0..n-1 in order")
    _check_count(counter, n)
    return Outcome(figures={"total_s": took})


def chain(driver: Driver, counter: Counter, n: int, limits: Limits, batch_size: int) -> Outcome:
    """Workload 10: warm idle workers; a chain of n steps, send -> the last step's result, CHAIN_REPEATS times."""
    _warm_up(driver, counter, limits)
    samples = []
    for _ in range(CHAIN_REPEATS):
        value, took = _workflow_result(driver, "chain", n, limits)
        if value != n:
            raise Failed("error", f"WRONG RESULT: the chain of {n} returned {value!r}")
        samples.append(took)
    return Outcome(figures={"p50_ms": statistics.median(samples) * 1000, "mean_ms": statistics.fmean(samples) * 1000})


def _check_count(counter: Counter, n: int) -> None:
    value = counter.value()
    if value < n:
        raise Failed("dropped", f"DROPPED {n - value}: every result came back but the counter is {value}")
    if value > n:
        raise Failed("error", f"DUPLICATES {value - n}: the counter is {value} for {n} tasks")


def web(driver: Driver, counter: Counter, n: int, limits: Limits, batch_size: int) -> Outcome:
    """Issue 15: 200 then 20 HTTP clients against the system's FastAPI app (see ``bench/web.py``)."""
    import asyncio

    from bench.web import run_web

    driver.start_workers()
    figures, failures, sent = asyncio.run(run_web(driver, n, min(limits.deadline, time.monotonic() + limits.startup)))
    if failures:
        raise Failed("error", f"FAILED {len(failures)} of {sent} requests; first: {failures[0][:200]}")
    _check_count(counter, sent)
    return Outcome(figures=figures)


def adelay(driver: Driver, counter: Counter, n: int, limits: Limits, batch_size: int) -> Outcome:
    """Issue 15: microseconds per ``task.delay()`` and per ``await task.adelay()`` call (conveyor, no worker)."""
    seconds = driver.per_call_seconds(n)
    return Outcome(
        figures={
            "adelay_us": seconds["adelay_s"] * 1e6,
            "delay_us": seconds["delay_s"] * 1e6,
            "ratio": seconds["adelay_s"] / seconds["delay_s"],
        }
    )


RUNNERS: dict[str, Callable[[Driver, Counter, int, Limits, int], Outcome]] = {
    "throughput": throughput,
    "results": results,
    "latency": latency,
    "batch": batch,
    "mixed": mixed,
    IO_THREADS: io_threads,
    IO_ASYNC: io_async,
    "chord": chord,
    "group": group,
    "chain": chain,
    WEB: web,
    ADELAY: adelay,
}
