"""Where the no-op drain's time goes: every process of the worker tree and the Redis server, per task.

``python -m bench.noop_tree [--n 40000] [-c 2] [--events true|false] [--loglevel WARNING] [--attach CMD]``
starts a private ``redis-server`` (as ``python -m bench`` does), queues N no-op tasks of the throughput
workload (``bench.systems.conveyor_tasks.noop``: each INCRs the completion counter), starts
``conveyor worker -c 2 --pool process`` and, between the first completion and the last, reads:

- CPU (user + system, psutil) of the redis-server, the supervisor and each child, in µs per task, and how
  often each was preempted (involuntary context switches) per task;
- the voluntary context switches (blocking waits) of every thread, per task (``main``: the thread that runs
  tasks in a child; unnamed Python threads show as ``python``);
- ``INFO commandstats``: calls and µs inside the server per task of each command (the commands a script
  runs are counted both under their own name and within ``evalsha``);
- ``INFO stats`` ``total_reads_processed``: the server's read events per task, about its round trips
  (each task's own INCR is one, so conveyor's share is what is above 1).

``--bare`` runs, instead of a worker, the task's body alone: ``-c`` forked processes each INCRing the counter
(through the same redis-py client as the task module) until N, on the same kind of private server. That is the
ceiling of the workload for any task queue on this machine at this moment: the no-op task's own round trip.

``--attach CMD`` runs a shell command mid-drain and waits for it; ``{child}`` (first child), ``{child_1}``,
``{supervisor}`` and ``{redis_server}`` are replaced by pids, e.g.
``--attach "perf stat -e task-clock,context-switches -p {child} -- sleep 3"`` or
``--attach "timeout -s INT 3 strace -c -f -p {child} -o /tmp/child.strace"``.

Rates and CPU seconds move with the machine's load; the counts (commands, reads, waits) much less.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import redis

from bench.redis_server import RedisServer
from bench.systems import COUNTER_KEY, REDIS_URL_ENV

APP = "bench.systems.conveyor_tasks:app"


def _cpu(proc: psutil.Process) -> tuple[float, int]:
    """(CPU seconds, involuntary context switches) of the whole process."""
    try:
        t = proc.cpu_times()
        return t.user + t.system, proc.num_ctx_switches().involuntary
    except psutil.Error:
        return 0.0, 0


def _waits(procs: dict[str, psutil.Process]) -> dict[str, int]:
    """Voluntary context switches of every thread, keyed ``process/thread``."""
    out: dict[str, int] = {}
    for name, proc in procs.items():
        for task in Path(f"/proc/{proc.pid}/task").glob("*"):
            try:
                status = (task / "status").read_text()
                comm = (task / "comm").read_text().strip()
            except OSError:
                continue
            found = re.search(r"^voluntary_ctxt_switches:\s*(\d+)", status, re.MULTILINE)
            key = f"{name}/{'main' if task.name == str(proc.pid) else comm}"
            out[key] = out.get(key, 0) + (int(found.group(1)) if found else 0)
    return out


def _commandstats(client: redis.Redis) -> dict[str, tuple[int, int]]:
    """Command -> (calls, µs inside the server) since the last CONFIG RESETSTAT."""
    stats = client.info("commandstats").items()
    return {k.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for k, v in stats}


class Snapshot:
    """Every counter the report compares, read at one moment."""

    def __init__(self, procs: dict[str, psutil.Process], client: redis.Redis) -> None:
        self.at = time.perf_counter()
        self.done = int(client.get(COUNTER_KEY) or 0)
        self.cpu = {name: _cpu(p) for name, p in procs.items()}
        self.waits = _waits(procs)
        self.commands = _commandstats(client)
        self.reads = int(client.info("stats")["total_reads_processed"])


def report(a: Snapshot, b: Snapshot) -> None:
    tasks = b.done - a.done
    print(f"{tasks} tasks in {b.at - a.at:.3f} s: {tasks / (b.at - a.at):,.0f}/s   load {os.getloadavg()}")
    total = 0.0
    for name, (cpu, preempted) in b.cpu.items():
        us = (cpu - a.cpu[name][0]) / tasks * 1e6
        total += us
        print(f"  {name:14s} {us:7.1f} µs CPU/task   preempted {(preempted - a.cpu[name][1]) / tasks:.3f}/task")
    print(f"  {'total':14s} {total:7.1f} µs CPU/task   (wall {1e6 * (b.at - a.at) / tasks:.1f} µs/task on 2 cores)")
    for key in sorted(b.waits):
        waits = b.waits[key] - a.waits.get(key, 0)
        if waits:
            print(f"  waits {key:28s} {waits / tasks:7.3f} /task")
    for name in sorted(b.commands, key=lambda k: -(b.commands[k][1] - a.commands.get(k, (0, 0))[1])):
        calls, usec = (x - y for x, y in zip(b.commands[name], a.commands.get(name, (0, 0)), strict=True))
        if calls:
            print(f"  redis {name:18s} {calls / tasks:7.3f} calls/task {usec / tasks:6.2f} µs/task")
    print(f"  redis read events        {(b.reads - a.reads) / tasks:7.3f} /task")


def _enqueue(n: int) -> None:
    from bench.systems import conveyor_tasks

    app = conveyor_tasks.app
    for start in range(0, n, 1000):
        app.send([conveyor_tasks.noop.message((i,)) for i in range(start, min(n, start + 1000))])
    app.close()


def _processes(worker: subprocess.Popen[bytes], server: RedisServer, slots: int) -> dict[str, psutil.Process]:
    top = psutil.Process(worker.pid)
    deadline = time.monotonic() + 60
    while len(top.children()) < slots and time.monotonic() < deadline:
        time.sleep(0.01)
    procs = {"redis-server": psutil.Process(server.proc.pid), "supervisor": top}
    for i, child in enumerate(top.children()):
        procs[f"child-{i}"] = child
    return procs


def _wait_for(client: redis.Redis, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while int(client.get(COUNTER_KEY) or 0) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"the counter did not reach {count} within {timeout:.0f} s")
        time.sleep(0.005)


def _bare_child(share: int) -> None:
    from bench.systems._counter import incr

    for _ in range(share):
        incr()
    os._exit(0)


def bare(n: int, slots: int, server: RedisServer, client: redis.Redis) -> None:
    """The task's body without a queue: ``slots`` processes INCRing the counter, n times in all."""
    pids = []
    first = time.perf_counter()
    before = _cpu(psutil.Process(server.proc.pid))[0]
    for i in range(slots):
        pid = os.fork()
        if pid == 0:
            _bare_child(n // slots + (i < n % slots))
        pids.append(pid)
    children = 0.0
    for pid in pids:
        _, _, usage = os.wait4(pid, 0)
        children += usage.ru_utime + usage.ru_stime
    elapsed = time.perf_counter() - first
    done = int(client.get(COUNTER_KEY) or 0)
    server_us = (_cpu(psutil.Process(server.proc.pid))[0] - before) / done * 1e6
    rate = done / elapsed
    print(f"bare INCR loop, {slots} process(es): {done} in {elapsed:.3f} s: {rate:,.0f}/s   load {os.getloadavg()}")
    print(f"  redis-server   {server_us:7.1f} µs CPU/task")
    print(f"  processes      {children / done * 1e6:7.1f} µs CPU/task (all of them)")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=int, default=40000, help="no-op tasks to drain")
    parser.add_argument("-c", type=int, default=2, help="worker children (the throughput workload's default)")
    parser.add_argument("--events", default="true", help="CONVEYOR_EVENTS for the worker")
    parser.add_argument("--loglevel", default="WARNING")
    parser.add_argument("--attach", default="", help="a shell command run mid-drain (see the module doc)")
    parser.add_argument("--bare", action="store_true", help="the task's INCR alone in -c processes: the ceiling")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="noop-tree-"))
    server = RedisServer(workdir)
    env = {"CONVEYOR_BROKER_URL": server.url, "CONVEYOR_EVENTS": args.events, REDIS_URL_ENV: server.url}
    os.environ.update(env)
    client = redis.Redis.from_url(server.url)
    worker = None
    try:
        if args.bare:
            bare(args.n, args.c, server, client)
            return
        _enqueue(args.n)
        client.config_resetstat()
        cmd = [sys.executable, "-m", "conveyor", "worker", APP, "-c", str(args.c), "--pool", "process"]
        worker = subprocess.Popen([*cmd, "--loglevel", args.loglevel])
        procs = _processes(worker, server, args.c)
        _wait_for(client, 1, 120)
        first = Snapshot(procs, client)
        if args.attach:
            pids = {name.replace("-", "_"): p.pid for name, p in procs.items()}
            subprocess.run(args.attach.format(child=pids.get("child_0", 0), **pids), shell=True, check=False)
        _wait_for(client, args.n, 600)
        report(first, Snapshot(procs, client))
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(60)
        client.close()
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
