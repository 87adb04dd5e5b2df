"""redis-server instructions per message of a process-pool child's round trips (callgrind, no load noise).

``python -m bench.reserve_cost [--n 4000] [--batch 16] [--consumers 2]`` starts a private ``redis-server``
under ``valgrind --tool=callgrind`` with instrumentation off, queues N no-op messages, then turns it on while
``consumers`` owners take turns at ``Broker.ack_and_reserve`` (ack the last batch, reserve the next: the
pipeline a process-pool child sends), and prints the server's instructions per message: the scripts, the
network and the event loop, the task's own work left out. Two consumers leave the in-flight set as a two-child
drain does (two batches held).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench.redis_server import command, spare_port
from conveyor import App


def measure(n: int, batch: int, consumers: int) -> float:
    work = Path(tempfile.mkdtemp(prefix="reserve-cost-"))
    port = spare_port()
    cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={work / 'cg.out'}"]
    cmd += ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    server = subprocess.Popen([*cmd, "--dir", str(work)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if command(url, "PING") == b"PONG":
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        app = App("reservecost", broker_url=url, track_started=False)

        @app.task(ignore_result=True, name="reservecost.noop")
        def noop(i: int) -> None:
            """Nothing."""

        for start in range(0, n, 1000):
            app.send([noop.message((i,)) for i in range(start, min(n, start + 1000))])
        broker = app.broker
        held = [broker.ack_and_reserve([], ["default"], batch, owner=f"o{i}", lease=30) for i in range(consumers)]
        subprocess.run(["callgrind_control", "-i", "on", str(server.pid)], check=True, capture_output=True)
        taken = 0
        while any(held):
            for i in range(consumers):
                taken += len(held[i])
                held[i] = broker.ack_and_reserve(held[i], ["default"], batch, owner=f"o{i}", lease=30)
        subprocess.run(["callgrind_control", "-i", "off", str(server.pid)], check=True, capture_output=True)
        app.close()
    finally:
        server.terminate()
        _, err = server.communicate(timeout=120)
        shutil.rmtree(work, ignore_errors=True)
    found = re.search(r"Collected : (\d+)", err)
    if found is None:
        raise SystemExit(f"callgrind run failed:\n{err[-3000:]}")
    return int(found.group(1)) / taken


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.reserve_cost", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--consumers", type=int, default=2)
    args = parser.parse_args()
    per = measure(args.n, args.batch, args.consumers)
    print(f"batches of {args.batch}, {args.consumers} consumer(s): {per:,.0f} redis-server instructions per message")


if __name__ == "__main__":
    main()
