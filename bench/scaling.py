"""Scaling: W = 1, 2, 4, 8, 16 worker processes on I/O-bound tasks, efficiency against the ideal (issue 19).

::

    python -m bench.scaling                                   conveyor-redis, dramatiq, celery; 3 runs
    python -m bench.scaling --workers 1,2,4 --runs 1 --per-worker-n 300     a quick look

Each point is the io-threads workload (``bench/workloads.py``) with W worker processes of
``--threads`` (8) threads each: ``--per-worker-n`` x W tasks that block 20 ms (then count) are queued
with the workers stopped, then the workers drain them. The rate is the steady one (10 % to 90 % done).
Efficiency = rate(W) / (W x rate(1)) of the same system; the slots' own ceiling is W x threads / 20 ms.

The profile names the ceiling: over the same steady window the driver samples the Redis server's CPU
(``INFO cpu``) and the workers' process trees (psutil), in % of one core. A broker near 100 % is the
broker's ceiling (Redis runs commands on one thread); workers + broker near the machine's cores is the
CPU's (the machine's busy time, every process counted: on a shared machine other load fills it
too). Every system runs on one fresh ``redis-server`` of the harness, systems in turn within a run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.cli import RESULTS_DIR, _load_average, _prepare_workdir, run_driver
from bench.redis_server import RedisServer, server_version
from bench.systems import IO_BLOCK_SECONDS, IO_THREADS, SYSTEMS

DEFAULT_SYSTEMS = ("conveyor-redis", "dramatiq", "celery")
DEFAULT_WORKERS = (1, 2, 4, 8, 16)
#: A broker this busy (in % of its one core) is the ceiling.
BROKER_BOUND = 85.0
#: A machine this busy (in % of every core) makes the CPU the ceiling.
CPU_BOUND = 85.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.splitlines()[0])
    parser.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS), help="comma-separated systems")
    parser.add_argument("--workers", default=",".join(map(str, DEFAULT_WORKERS)), help="worker counts W")
    parser.add_argument("--threads", type=int, default=8, help="threads per worker process (default 8)")
    parser.add_argument("--per-worker-n", type=int, default=400, help="tasks per worker process (default 400)")
    parser.add_argument("--runs", type=int, default=3, help="runs (medians are reported; default 3)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds one point of one system may take")
    parser.add_argument("--table", type=Path, help="print the table of a saved run (its JSON records) and exit")
    args = parser.parse_args(argv)
    if args.table is not None:
        print(_from_file(args.table, args.threads, os.cpu_count() or 1))
        return 0
    systems = [s for s in args.systems.split(",") if s]
    unknown = [s for s in systems if s not in SYSTEMS or IO_THREADS not in SYSTEMS[s].workloads]
    if unknown:
        parser.error(f"no io-threads pool: {', '.join(unknown)}")
    counts = [int(w) for w in args.workers.split(",")]
    workdir = _prepare_workdir()
    server = RedisServer(workdir)
    cores = os.cpu_count() or 1
    load_before = _load_average()
    print(
        f"scaling: {', '.join(systems)}; W = {counts} x {args.threads} threads; {args.per_worker_n} tasks per worker "
        f"of {IO_BLOCK_SECONDS * 1000:.0f} ms; {args.runs} run(s); Redis {server_version(server.url)}; "
        f"{cores} cores; load average {load_before}",
        flush=True,
    )
    points: dict[tuple[str, int], list[dict[str, Any]]] = {}
    started = time.monotonic()
    try:
        for run in range(args.runs):
            for w in counts:
                order = systems[run % len(systems) :] + systems[: run % len(systems)]
                for system in order:
                    record = _point(system, w, run, server.url, args, workdir)
                    points.setdefault((system, w), []).append(record)
                    f = record.get("figures", {})
                    print(
                        f"  run {run + 1} W={w:>2} {system}: {record.get('status')} "
                        f"{f.get('steady_rate', 0):.0f}/s broker {f.get('broker_cpu_pct', 0):.0f}% "
                        f"workers {f.get('workers_cpu_pct', 0):.0f}% machine {f.get('machine_cpu_pct', 0):.0f}% "
                        f"({record.get('seconds', '?')} s)",
                        flush=True,
                    )
    finally:
        server.stop()
    print()
    print(table(points, systems, counts, args.threads, cores))
    out = RESULTS_DIR / "scaling.json"
    out.write_text(json.dumps([r for rs in points.values() for r in rs], indent=1) + "\n")
    print(f"records: {out}")
    print(
        f"\n{time.monotonic() - started:.0f} s; load average before {load_before}, after {_load_average()}. "
        "A shared or busy machine moves every figure: compare systems within one run."
    )
    return 0


def _point(system: str, w: int, run: int, url: str, args: argparse.Namespace, workdir: Any) -> dict[str, Any]:
    """One run of io-threads for ``system`` with ``w`` workers of ``args.threads`` threads."""
    shape = argparse.Namespace(
        timeout=args.timeout,
        concurrency=2,
        batch_size=1000,
        io_workers=w,
        io_threads=args.threads,
        io_async_slots=1,
        conveyor_src=None,
    )
    record = run_driver(system, IO_THREADS, args.per_worker_n * w, run + 1, url, shape, workdir)
    record["workers"] = w
    return record


def table(
    points: dict[tuple[str, int], list[dict[str, Any]]], systems: list[str], counts: list[int], threads: int, cores: int
) -> str:
    """The scaling table: medians per (system, W), efficiency against W x rate(1), the profile, the ceiling named."""
    head = (
        f"{'W':>3} {'system':<15} {'tasks/s':>8} {'ideal':>7} {'eff.':>5} {'slots':>6} {'broker':>7} {'workers':>8} "
        f"{'machine':>8} {'ms/task':>8} {'cpu cap':>8}  ceiling"
    )
    lines = [head, "-" * len(head)]
    for w in counts:
        for system in systems:
            ok = [r["figures"] for r in points.get((system, w), []) if r.get("status") == "ok"]
            if not ok:
                runs = points.get((system, w), [])
                lines.append(f"{w:>3} {system:<15} {'-':>8}  {runs[-1].get('detail', '') if runs else 'not run'}")
                continue
            rate = statistics.median(f["steady_rate"] for f in ok)
            broker = statistics.median(f["broker_cpu_pct"] for f in ok)
            workers = statistics.median(f["workers_cpu_pct"] for f in ok)
            machine = statistics.median(f["machine_cpu_pct"] for f in ok)
            base = [r["figures"]["steady_rate"] for r in points.get((system, 1), []) if r.get("status") == "ok"]
            ideal = w * statistics.median(base) if base else float("nan")
            slots = w * threads / IO_BLOCK_SECONDS
            per_task = 10 * (workers + broker) / rate  # ms of CPU (workers and broker) per task
            cap = cores * 1000 / per_task if per_task > 0 else float("inf")
            lines.append(
                f"{w:>3} {system:<15} {rate:>8.0f} {ideal:>7.0f} {rate / ideal:>5.0%} {slots:>6.0f} {broker:>6.0f}% "
                f"{workers:>7.0f}% {machine:>7.0f}% {per_task:>8.2f} {cap:>8.0f}  "
                f"{ceiling(rate, slots, broker, workers, machine, cores)}"
            )
    lines.append(
        f"tasks/s: steady drain rate (10-90 %), median of runs; ideal: W x the 1-worker rate; slots: W x {threads} "
        f"threads / 20 ms; broker, workers, machine (every process on it): CPU in % of one core ({cores} cores) over "
        "the same window; ms/task: CPU of workers and broker per task; cpu cap: the rate at which they would fill "
        f"all {cores} cores alone."
    )
    return "\n".join(lines)


def ceiling(rate: float, slots: float, broker: float, workers: float, machine: float, cores: int) -> str:
    """What bounds this point: the broker's one core, the slots, or the machine's cores; else none of them."""
    if broker >= BROKER_BOUND:
        return f"broker (redis-server {broker:.0f}% of its core)"
    if rate >= 0.8 * slots:
        return "slots (W x threads / 20 ms)"
    if machine >= CPU_BOUND * cores:
        share = (workers + broker) / machine
        return f"CPU (machine {machine:.0f}% of {cores * 100}%, {share:.0%} of it this system's)"
    return "none saturated (round-trip latency)"


def _from_file(path: Path, threads: int, cores: int) -> str:
    """The table of a saved run (``bench/results/scaling.json``)."""
    records = json.loads(path.read_text())
    points: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for record in records:
        points.setdefault((record["system"], record["workers"]), []).append(record)
    systems = list(dict.fromkeys(r["system"] for r in records))
    counts = sorted({r["workers"] for r in records})
    return table(points, systems, counts, threads, cores)


if __name__ == "__main__":
    sys.exit(main())
