"""Instructions per ``task.delay()`` and per ``await task.adelay()`` on Redis, measured in one process each.

``python -m bench.adelay_cost run sync|async N --prefix P``: one producer process (an app on ``REDIS_URL``,
default the local server, under key prefix P) makes one call to connect and register the queue, then
N sequential calls of ``noop.delay(i)`` (sync) or ``await noop.adelay(i)`` (async, on one
``asyncio.run``), then deletes the prefix's keys. ``python -m bench.adelay_cost measure`` runs each way
under ``valgrind --tool=callgrind`` for two values of N (``--n1 500 --n2 2500``) and prints the
difference of the instruction counts over the difference of N: the per-call cost, start-up excluded,
repeatable on a loaded machine (wall time is not). Only user-space instructions count: the syscalls'
kernel time is left out (the async path makes one more, the ``epoll_wait`` that finds the reply).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from bench.noop_cost import delete_prefix
from conveyor import App

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def make_app(prefix: str) -> App:
    app = App("adelaycost", broker_url=f"{REDIS_URL}?prefix={prefix}", track_started=False, log_level="WARNING")

    @app.task(ignore_result=True, name="adelaycost.noop")
    def noop(i: int) -> None:
        """Nothing at all (never run: no worker)."""

    return app


def run(way: str, n: int, prefix: str, cleanup: bool = True) -> None:
    app = make_app(prefix)
    noop = app.tasks["adelaycost.noop"]
    try:
        if way == "sync":
            noop.delay(-1)  # connect and register the queue
            for i in range(n):
                noop.delay(i)
        else:

            async def calls() -> None:
                await noop.adelay(-1)
                for i in range(n):
                    await noop.adelay(i)
                await app.aclose()

            asyncio.run(calls())
    finally:
        app.close()
        if cleanup:  # (measure cleans up after the process: deleting N messages' keys costs per call too)
            delete_prefix(prefix)


def _callgrind(way: str, n: int) -> int:
    prefix = f"adelaycost-{uuid.uuid4().hex[:10]}"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cg.out"
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
        cmd += [sys.executable, "-m", "bench.adelay_cost", "run", way, str(n), "--prefix", prefix, "--keep"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        delete_prefix(prefix)
        found = re.search(r"Collected : (\d+)", proc.stderr)
        if proc.returncode != 0 or found is None:
            raise SystemExit(f"callgrind run failed:\n{proc.stderr[-3000:]}")
        return int(found.group(1))


def measure(n1: int, n2: int, ways: list[str]) -> None:
    per_call = {}
    for way in ways:
        a, b = _callgrind(way, n1), _callgrind(way, n2)
        per_call[way] = (b - a) / (n2 - n1)
        name = "delay()" if way == "sync" else "await adelay()"
        print(f"{name:15} {per_call[way]:10,.0f} instructions/call", flush=True)
    if len(per_call) == 2:
        print(f"{'adelay ÷ delay':15} {per_call['async'] / per_call['sync']:10.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.adelay_cost")
    parser.add_argument("mode", choices=("run", "measure"))
    parser.add_argument("way", choices=("sync", "async"), nargs="?", default="sync")
    parser.add_argument("n", type=int, nargs="?", default=0)
    parser.add_argument("--prefix", default="")
    parser.add_argument("--keep", action="store_true", help="run: leave the prefix's keys (the caller deletes them)")
    parser.add_argument("--n1", type=int, default=500)
    parser.add_argument("--n2", type=int, default=2500)
    parser.add_argument("--ways", default="sync,async", help="measure: which paths (default both)")
    args = parser.parse_args()
    if args.mode == "run":
        run(args.way, args.n, args.prefix or f"adelaycost-{uuid.uuid4().hex[:10]}", cleanup=not args.keep)
    else:
        measure(args.n1, args.n2, args.ways.split(","))


if __name__ == "__main__":
    main()
