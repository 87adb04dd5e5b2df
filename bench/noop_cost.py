"""Instructions (or CPU) per no-op task on a worker child's path, measured in one process (no fork, no load noise).

``python -m bench.noop_cost enqueue N --prefix P``: puts N no-op tasks on ``queue`` under key prefix P of
``REDIS_URL`` (default the local server); ``--amqp VHOST`` puts them on RabbitMQ instead (``BENCH_AMQP_URL``, that
vhost, queue prefix P; results on ``REDIS_URL`` under P, as the benchmark's conveyor-amqp runs them).
``python -m bench.noop_cost drain N --prefix P [--loglevel INFO]``:
runs a process-pool worker child (``child_main``, the code ``conveyor worker`` forks) in this process until
those N tasks are done, then stops it and deletes the prefix's keys. Run the drain under
``valgrind --tool=callgrind`` for two values of N: the difference of the instruction counts over the
difference of N is the per-task cost, start-up excluded. ``python -m bench.noop_cost measure`` does that
(``--n1 500 --n2 2500``; ``--amqp``: on RabbitMQ, in one fresh vhost deleted at the end) for WARNING and INFO
and prints instructions per task, of the whole process and of its main thread alone: the timed threads (the
heartbeat, the backlog's watch, this script's own poll) cost instructions per second, not per task, and
valgrind's slowness turns those into many per task.

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
from urllib.parse import quote

import redis

from conveyor import App
from conveyor.logging import configure

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def make_app(prefix: str, vhost: str = "") -> App:
    if vhost:  # RabbitMQ, results on Redis (a required separate backend there)
        from bench.systems._rabbit import AMQP_URL_ENV, DEFAULT_AMQP_URL

        server = os.environ.get(AMQP_URL_ENV, DEFAULT_AMQP_URL).rstrip("/")
        broker, backend = f"{server}/{quote(vhost, safe='')}?prefix={prefix}", f"{REDIS_URL}?prefix={prefix}"
    else:
        broker, backend = f"{REDIS_URL}?prefix={prefix}", None
    app = App("noopcost", broker_url=broker, backend_url=backend, track_started=False, log_level="WARNING")

    @app.task(ignore_result=True, name="noopcost.noop")
    def noop(i: int) -> None:
        """Nothing at all."""

    return app


def enqueue(n: int, prefix: str, vhost: str = "") -> None:
    app = make_app(prefix, vhost)
    noop = app.tasks["noopcost.noop"]
    for start in range(0, n, 500):
        app.send([noop.message((i,)) for i in range(start, min(n, start + 500))])
    app.close()


def delete_prefix(prefix: str) -> None:
    """Delete every key of a run's prefix on ``REDIS_URL`` (plain and hash-tagged); also bench/adelay_cost.py's."""
    client = redis.Redis.from_url(REDIS_URL)
    for pattern in (f"{prefix}*", f"{{{prefix}*"):
        keys = list(client.scan_iter(match=pattern, count=1000))
        if keys:
            client.delete(*keys)
    client.close()


def drain(n: int, prefix: str, loglevel: str, vhost: str = "") -> None:
    from conveyor.worker.child import ChildConfig, child_main

    app = make_app(prefix, vhost)
    configure(app, loglevel)
    app.finalize()
    stats_app = make_app(prefix, vhost)
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
    delete_prefix(prefix)


def _callgrind(n: int, loglevel: str, vhost: str = "") -> tuple[int, int]:
    """(instructions of the whole process, of its main thread: the task path without the timed threads)."""
    prefix = f"noopcost-{uuid.uuid4().hex[:10]}"
    where = ["--prefix", prefix, *(["--amqp", vhost] if vhost else [])]
    subprocess.run([sys.executable, "-m", "bench.noop_cost", "enqueue", str(n), *where], check=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cg.out"
        cmd = ["valgrind", "--tool=callgrind", "--separate-threads=yes", f"--callgrind-out-file={out}"]
        cmd += [sys.executable, "-m", "bench.noop_cost", "drain", str(n), *where, "--loglevel", loglevel]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        found = re.search(r"Collected : (\d+)", proc.stderr)
        main = Path(f"{out}-01")
        summary = re.search(r"^summary: (\d+)", main.read_text(), re.MULTILINE) if main.exists() else None
        if proc.returncode != 0 or found is None or summary is None:
            delete_prefix(prefix)
            raise SystemExit(f"callgrind run failed:\n{proc.stderr[-3000:]}")
        return int(found.group(1)), int(summary.group(1))


def measure(n1: int, n2: int, amqp: bool = False) -> None:
    vhost = None
    if amqp:
        from bench.systems._rabbit import Vhost

        vhost = Vhost("noopcost")
    try:
        name = vhost.name if vhost is not None else ""
        for level in ("WARNING", "INFO"):
            (a, a_main), (b, b_main) = _callgrind(n1, level, name), _callgrind(n2, level, name)
            whole, main = (b - a) / (n2 - n1), (b_main - a_main) / (n2 - n1)
            print(f"{level:8} {whole:10,.0f} instructions/task, {main:10,.0f} in the main thread", flush=True)
    finally:
        if vhost is not None:
            vhost.delete()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.noop_cost")
    parser.add_argument("mode", choices=("enqueue", "drain", "measure"))
    parser.add_argument("n", type=int, nargs="?", default=0)
    parser.add_argument("--prefix", default="")
    parser.add_argument("--loglevel", default="WARNING")
    parser.add_argument("--n1", type=int, default=500)
    parser.add_argument("--n2", type=int, default=2500)
    parser.add_argument("--amqp", nargs="?", const="new", default="", help="RabbitMQ: the vhost (measure: a new one)")
    args = parser.parse_args()
    if args.mode == "enqueue":
        enqueue(args.n, args.prefix, args.amqp)
    elif args.mode == "drain":
        drain(args.n, args.prefix, args.loglevel, args.amqp)
    else:
        measure(args.n1, args.n2, bool(args.amqp))


if __name__ == "__main__":
    main()
