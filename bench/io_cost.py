"""Where io-threads' time goes: CPU per task of each worker process and thread, Redis commands per task.

``python -m bench.io_cost [-n 30000] [--workers 2] [--slots 128] [--src DIR]`` starts a private
``redis-server``, queues N ``io`` tasks of ``bench.systems.conveyor_tasks`` (block 20 ms, then count),
starts the workers (``conveyor worker ... --pool thread``, conveyor from ``--src``, default this
checkout's), and waits until every task counted itself. It prints the drain rate, then per task: the
CPU of each worker process (psutil, start-up included), the busiest threads, the voluntary context
switches of all threads (each one a thread that blocked: on the GIL, a lock, a socket or a sleep),
the Redis server's CPU, and each Redis command's calls and microseconds (``INFO commandstats``, which
counts the commands Lua scripts run). The last line (``SUMMARY``) is the one to compare: CPU and
commands per task move little with the machine's load, the rate moves a lot. Alternate two
``--src`` trees run after run to compare them (docs/benchmarks.md, "io-threads: the ready margin").
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import redis

from bench.redis_server import command, spare_port

ROOT = Path(__file__).resolve().parents[1]
ENQUEUE = """
from bench.systems import conveyor_tasks as t
for start in range(0, {n}, 1000):
    t.app.send([t.io.message((i,)) for i in range(start, min({n}, start + 1000))])
t.app.close()
"""


def wait_until_up(url: str) -> None:
    """Wait (up to 5 s) until the Redis of ``url`` answers PING."""
    for _ in range(100):
        try:
            command(url, "PING")
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"redis-server at {url} did not start")


def _switches(pid: int) -> int:
    """Voluntary context switches of every thread of ``pid`` so far."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with (task / "status").open() as status:
            total += sum(int(line.split()[1]) for line in status if line.startswith("voluntary_ctxt_switches"))
    return total


class Drain:
    """One drain of ``n`` io tasks by ``workers`` thread-pool workers on the Redis of ``url``: what it cost."""

    def __init__(self, url: str, src: Path, n: int, workers: int, slots: int) -> None:
        self.client = redis.Redis.from_url(url)
        self.n = n
        self.env = {**os.environ, "CONVEYOR_BROKER_URL": url, "BENCH_REDIS_URL": url, "PYTHONPATH": f"{src}:{ROOT}"}
        self.command = [sys.executable, "-m", "conveyor", "worker", "bench.systems.conveyor_tasks:app"]
        self.command += ["-c", str(slots), "--pool", "thread", "--loglevel", "WARNING"]
        self.workers = workers
        self.seen: dict[int, psutil.Process] = {}
        self.threads: dict[tuple[int, int], float] = {}
        self.rate = 0.0

    def run(self) -> tuple[dict[int, float], dict[int, int]]:
        """Queue, start the workers, wait for every count; return each process's CPU seconds and switches."""
        subprocess.run([sys.executable, "-c", ENQUEUE.format(n=self.n)], env=self.env, check=True, cwd=ROOT)
        self.client.config_resetstat()
        workers = [subprocess.Popen(self.command, env=self.env, cwd=ROOT) for _ in range(self.workers)]
        try:
            first: tuple[float, int] | None = None
            while (done := int(self.client.get("bench:done") or 0)) < self.n:
                if done and first is None:
                    first = (time.monotonic(), done)
                self._sample([w.pid for w in workers])
                time.sleep(0.05)
            start, counted = first or (time.monotonic() - 1e-9, 0)
            self.rate = (self.n - counted) / (time.monotonic() - start)
            return {pid: sum(p.cpu_times()[:2]) for pid, p in self.seen.items()}, {p: _switches(p) for p in self.seen}
        finally:
            for worker in workers:
                worker.terminate()
            for worker in workers:
                worker.wait(30)

    def _sample(self, pids: list[int]) -> None:
        for pid in pids:
            for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
                self.seen.setdefault(proc.pid, proc)
        for pid, proc in self.seen.items():
            for thread in proc.threads():
                self.threads[pid, thread.id] = thread.user_time + thread.system_time


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.io_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=30000, help="tasks (default 30000)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--slots", type=int, default=128, help="threads per worker (default 128)")
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="the directory holding the conveyor package")
    args = parser.parse_args()
    n, port = args.n, spare_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL
    )
    try:
        url = f"redis://127.0.0.1:{port}/0"
        wait_until_up(url)
        drain = Drain(url, args.src, n, args.workers, args.slots)
        redis_cpu = sum(psutil.Process(server.pid).cpu_times()[:2])
        cpu, switches = drain.run()
        redis_cpu = sum(psutil.Process(server.pid).cpu_times()[:2]) - redis_cpu
        stats = drain.client.info("commandstats")
    finally:
        server.terminate()
        server.wait()
    print(f"{n:,} tasks, {drain.rate:,.0f}/s from the first to the last count; load average {os.getloadavg()[0]:.1f}")
    for pid in cpu:
        print(f"  process {pid}: {cpu[pid] / n * 1e6:6.1f} us CPU/task, {switches[pid] / n:.2f} switches/task")
    for (pid, tid), used in sorted(drain.threads.items(), key=lambda kv: -kv[1])[:4]:
        print(f"  thread {pid}/{tid}: {used / n * 1e6:.1f} us CPU/task")
    for name, stat in sorted(stats.items(), key=lambda kv: -float(kv[1]["usec"]))[:8]:
        calls, usec = stat["calls"] / n, stat["usec"] / n
        print(f"  redis {name.removeprefix('cmdstat_'):16} {calls:6.3f} calls/task {usec:6.2f} us/task")
    workers, switched, server_cpu = sum(cpu.values()) / n * 1e6, sum(switches.values()) / n, redis_cpu / n * 1e6
    print(f"SUMMARY rate {drain.rate:.0f}/s workers {workers:.1f} us/task switches {switched:.2f}/task", end=" ")
    print(f"redis {server_cpu:.1f} us/task")


if __name__ == "__main__":
    main()
