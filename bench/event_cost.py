"""CPU price of the event log per task, measured in process (``python -m bench.event_cost``).

The throughput rows (conveyor-redis vs conveyor-redis-noevents) price events end to end, but on a
shared machine their noise dwarfs a few percent. This prices exactly what events add per task: in
the child, noting a received and an ended delivery, counting them (tally.py: the task series of
the dashboard and of ``--metrics-port``) and encoding its report for the pipe; in the supervisor,
decoding the pipe message, forwarding the report into the log batch and adding up its counts, then
encoding the batch once per batch of ``BATCH`` (a real worker does that once per half
second, whatever the throughput: this overstates it). The batch's write to the backend is left out.

Two measures:

- default: CPU microseconds (``time.process_time``, which other processes' load barely moves),
  medians of 5;
- ``--instructions``: instructions per task counted by ``valgrind --tool=callgrind`` (noise-free):
  each side runs in its own process at two round counts, and the difference over the extra tasks
  leaves out the interpreter's start-up.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from conveyor import App
from conveyor.brokers import Delivery
from conveyor.eventlog import encode_batch
from conveyor.middleware import Outcome
from conveyor.worker.events import Ended, Happened, decode_event, encode_event, happened
from conveyor.worker.observer import Observer

BATCH = 16  # the process pool's default prefetch: one Happened message per batch at most
ROUNDS = 5_000


def _inputs() -> tuple[list[Delivery], list[Outcome]]:
    deliveries = [Delivery(f"{i:032x}", "default", b"", 0, 1, "t", "o") for i in range(BATCH)]
    outcomes = [Outcome(d.id, "shop.tasks.noop", Ended.SUCCESS, 0.0001) for d in deliveries]
    return deliveries, outcomes


def child_side(rounds: int) -> list[bytes]:
    """What a child does for events over ``rounds`` batches: note, encode the pipe message."""
    deliveries, outcomes = _inputs()
    wires = []
    for _ in range(rounds):
        now = time.time()
        received = [(d.id, d.queue, d.deliveries, now) for d in deliveries]  # EventNotes.received
        ended = [(o.id, o.task, o.ended, o.runtime, time.time()) for o in outcomes]  # EventNotes.ended
        wires.append(encode_event(happened(received, ended)))  # the child's pipe message
    return wires


def supervisor_side(wires: list[bytes]) -> None:
    """What a supervisor does for events with the children's messages: decode, forward, tally, encode the batch."""
    observer = Observer(App("cost", broker_url="memory://", backend_url="memory://"), "w")
    for wire in wires:
        report = decode_event(wire)
        assert isinstance(report, Happened)
        observer.happened(report)
        encode_batch(observer._batch, "w", observer._compact)  # what publish() writes
        observer._batch, observer._compact = [], []
        observer._counts = {}  # what publish() adds to the engine's counters


def per_task_us() -> tuple[float, float]:
    """(child, supervisor): medians over 5 samples of the CPU microseconds events add per task on each side."""
    child, supervisor = [], []
    for _ in range(5):
        started = time.process_time()
        wires = child_side(ROUNDS)
        middle = time.process_time()
        supervisor_side(wires)
        done = time.process_time()
        child.append((middle - started) / (ROUNDS * BATCH) * 1e6)
        supervisor.append((done - middle) / (ROUNDS * BATCH) * 1e6)
    return sorted(child)[2], sorted(supervisor)[2]


def _instructions(side: str, rounds: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-m", __spec__.name]
        subprocess.run([*command, "--run", side, str(rounds)], check=True, capture_output=True)
        found = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.MULTILINE)
        assert found is not None
        return int(found.group(1))


def per_task_instructions(low: int = 200, high: int = 1200) -> tuple[float, float]:
    """(child, supervisor): instructions events add per task on each side, by callgrind."""
    tasks = (high - low) * BATCH
    child = (_instructions("child", high) - _instructions("child", low)) / tasks
    both = (_instructions("both", high) - _instructions("both", low)) / tasks
    return child, both - child


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instructions", action="store_true", help="count instructions with callgrind")
    parser.add_argument("--run", nargs=2, metavar=("SIDE", "ROUNDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:  # one side under callgrind (see _instructions)
        side, rounds = args.run[0], int(args.run[1])
        wires = child_side(rounds)
        if side == "both":
            supervisor_side(wires)
        return
    if args.instructions:
        in_child, in_supervisor = per_task_instructions()
        print(
            f"events add {in_child:,.0f} instructions per task in the child and {in_supervisor:,.0f} in the "
            f"supervisor (callgrind; batches of {BATCH})"
        )
        return
    in_child, in_supervisor = per_task_us()
    print(
        f"events add {in_child:.2f} us of CPU per task in the child and {in_supervisor:.2f} us in the supervisor "
        f"(medians of 5; batches of {BATCH})"
    )


if __name__ == "__main__":
    main()
