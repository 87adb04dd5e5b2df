"""Instructions (or CPU) per no-op task on a worker child's path, measured in one process (no fork, no load noise).

``python -m bench.noop_cost enqueue N --prefix P``: puts N no-op tasks on ``queue`` under key prefix P of
``REDIS_URL`` (default the local server). ``python -m bench.noop_cost drain N --prefix P [--loglevel INFO]``:
runs a process-pool worker child (``child_main``, the code ``conveyor worker`` forks) in this process until
those N tasks are done, then stops it and deletes the prefix's keys. Run the drain under
``valgrind --tool=callgrind`` for two values of N: the difference of the instruction counts over the
difference of N is the per-task cost, start-up excluded. ``python -m bench.noop_cost measure`` does that
(``--n1 500 --n2 2500``) for WARNING and INFO and prints instructions per task, of the whole process and
of its main thread alone: the timed threads (the heartbeat, the backlog's watch, this script's own poll)
cost instructions per second, not per task, and valgrind's slowness turns those into many per task.

The supervisor's side is left out (it reads one counts message and one events message per half second).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from multiprocessing import Pipe
from pathlib import Path

import redis

from conveyor import App
from conveyor.logging import configure

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def make_app(prefix: str) -> App:
    app = App("noopcost", broker_url=f"{REDIS_URL}?prefix={prefix}", track_started=False, log_level="WARNING")

    @app.task(ignore_result=True, name="noopcost.noop")
    def noop(i: int) -> None:
        """Nothing at all."""

    return app


def enqueue(n: int, prefix: str) -> None:
    app = make_app(prefix)
    noop = app.tasks["noopcost.noop"]
    for start in range(0, n, 500):
        app.send([noop.message((i,)) for i in range(start, min(n, start + 500))])
    app.close()


def _cleanup(prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    for pattern in (f"{prefix}*", f"{{{prefix}*"):
        keys = list(client.scan_iter(match=pattern, count=1000))
        if keys:
            client.delete(*keys)


def drain(n: int, prefix: str, loglevel: str) -> None:
    from conveyor.worker.child import ChildConfig, child_main

    app = make_app(prefix)
    configure(app, loglevel)
    app.finalize()
    stats_app = make_app(prefix)
    reader, writer = Pipe(duplex=False)
    config = ChildConfig(f"cost-{uuid.uuid4().hex[:8]}", 0, ("default",), 1, app.settings.lease, app.settings.prefetch)

    def read_pipe() -> None:  # the supervisor's end: read and drop
        try:
            while True:
                reader.recv_bytes()
        except (EOFError, OSError):
            return

    def watch() -> None:  # stop the child once every task is acked
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            time.sleep(0.25)  # seldom: under valgrind every poll costs instructions per task
            stats = {s.queue: s for s in stats_app.broker.stats()}
            s = stats.get("default")
            if s is not None and s.ready == 0 and s.in_flight == 0:
                break
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=read_pipe, daemon=True).start()
    threading.Thread(target=watch, daemon=True).start()
    child_main(app, config, writer)
    writer.close()
    _cleanup(prefix)


def _callgrind(n: int, loglevel: str) -> tuple[int, int]:
    """(instructions of the whole process, of its main thread: the task path without the timed threads)."""
    prefix = f"noopcost-{uuid.uuid4().hex[:10]}"
    subprocess.run([sys.executable, "-m", "bench.noop_cost", "enqueue", str(n), "--prefix", prefix], check=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cg.out"
        cmd = ["valgrind", "--tool=callgrind", "--separate-threads=yes", f"--callgrind-out-file={out}"]
        cmd += [sys.executable, "-m", "bench.noop_cost", "drain", str(n), "--prefix", prefix, "--loglevel", loglevel]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        found = re.search(r"Collected : (\d+)", proc.stderr)
        main = Path(f"{out}-01")
        summary = re.search(r"^summary: (\d+)", main.read_text(), re.MULTILINE) if main.exists() else None
        if proc.returncode != 0 or found is None or summary is None:
            _cleanup(prefix)
            raise SystemExit(f"callgrind run failed:\n{proc.stderr[-3000:]}")
        return int(found.group(1)), int(summary.group(1))


def measure(n1: int, n2: int) -> None:
    for level in ("WARNING", "INFO"):
        (a, a_main), (b, b_main) = _callgrind(n1, level), _callgrind(n2, level)
        whole, main = (b - a) / (n2 - n1), (b_main - a_main) / (n2 - n1)
        print(f"{level:8} {whole:10,.0f} instructions/task, {main:10,.0f} in the main thread", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.noop_cost")
    parser.add_argument("mode", choices=("enqueue", "drain", "measure"))
    parser.add_argument("n", type=int, nargs="?", default=0)
    parser.add_argument("--prefix", default="")
    parser.add_argument("--loglevel", default="WARNING")
    parser.add_argument("--n1", type=int, default=500)
    parser.add_argument("--n2", type=int, default=2500)
    args = parser.parse_args()
    if args.mode == "enqueue":
        enqueue(args.n, args.prefix)
    elif args.mode == "drain":
        drain(args.n, args.prefix, args.loglevel)
    else:
        measure(args.n1, args.n2)


if __name__ == "__main__":
    main()
