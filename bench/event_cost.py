"""CPU price of the event log per task, measured in process (``python -m bench.event_cost``).

The throughput rows (conveyor-redis vs conveyor-redis-noevents) price events end to end, but on a
shared machine their noise dwarfs a few percent. This times, in CPU seconds (``time.process_time``,
which other processes' load barely moves), exactly what events add per task: in the child, noting a
received and an ended delivery and encoding its report for the pipe; in the supervisor, decoding
the pipe message and forwarding the report into the log batch (the log's readers expand reports,
not the worker). The batch's one write per half second to the backend is left out.
"""

from __future__ import annotations

import time

from conveyor import App
from conveyor.brokers import Delivery
from conveyor.eventlog import encode_batch
from conveyor.middleware import Outcome
from conveyor.worker.events import Ended, Happened, decode_event, encode_event, happened
from conveyor.worker.observer import Observer

BATCH = 16  # the process pool's default prefetch: one Happened message per batch at most
ROUNDS = 5_000


def per_task_us() -> tuple[float, float]:
    """(child, supervisor): medians over 5 samples of the CPU microseconds events add per task on each side."""
    app = App("cost", broker_url="memory://", backend_url="memory://")
    deliveries = [Delivery(f"{i:032x}", "default", b"", 0, 1, "t", "o") for i in range(BATCH)]
    outcomes = [Outcome(d.id, "shop.tasks.noop", Ended.SUCCESS, 0.0001) for d in deliveries]
    child, supervisor = [], []
    for _ in range(5):
        observer = Observer(app, "w")
        wires = []
        started = time.process_time()
        for _ in range(ROUNDS):
            now = time.time()
            received = [(d.id, d.queue, d.deliveries, now) for d in deliveries]  # Child.received
            ended = [(o.id, o.task, o.ended, o.runtime, time.time()) for o in outcomes]  # Child.note_ended
            wires.append(encode_event(happened(received, ended)))  # the child's pipe message
        middle = time.process_time()
        for wire in wires:
            report = decode_event(wire)
            assert isinstance(report, Happened)
            observer.happened(report)
            encode_batch(observer._batch, "w", observer._compact)  # what publish() writes
            observer._batch, observer._compact = [], []
        done = time.process_time()
        child.append((middle - started) / (ROUNDS * BATCH) * 1e6)
        supervisor.append((done - middle) / (ROUNDS * BATCH) * 1e6)
    return sorted(child)[2], sorted(supervisor)[2]


if __name__ == "__main__":
    in_child, in_supervisor = per_task_us()
    print(
        f"events add {in_child:.2f} us of CPU per task in the child and {in_supervisor:.2f} us in the supervisor "
        f"(medians of 5; batches of {BATCH})"
    )
