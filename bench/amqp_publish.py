"""What one publish costs on RabbitMQ with pika alone, by queue kind and by what the publisher waits for.

``python -m bench.amqp_publish [--n 500] [--producers 1,4] [--cases ...]``: in a fresh vhost of the server
``BENCH_AMQP_URL`` names (default the local one), each case declares one durable queue, publishes ``--n``
messages one at a time (the next publish after the last one's answer, as one ``delay()`` after another)
and prints the median and 90th percentile of one publish in ms and the rate. With several producer
counts, each producer is a process of its own publishing to the same queue, and the rate is their sum:
whether RabbitMQ shares one disk write (fsync) among concurrent publishers. The vhost is deleted at the end.

What the cases wait for (docs/amqp.md, "What one delay() waits for"):

- ``tx``: a transaction per publish, ``tx.commit-ok``: pika's ``basic_publish`` writes the message at once and
  ``tx_commit`` the commit (two writes, one round trip);
- ``tx1``: the same in one write (the message is queued on pika's channel underneath, the commit sends both);
- ``confirm``: a publisher confirm per publish (RabbitMQ confirms a persistent message on a durable
  queue once the message is on disk);
- ``none``: no answer at all (Celery's and Dramatiq's default: the bytes are in the socket).
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from multiprocessing import Pool

import pika
import pika.channel

from bench.systems._rabbit import Vhost

BODY = b'{"v":1,"id":"0123456789abcdef0123456789abcdef","task":"bench.noop","args":[1],"kwargs":{}}' + b" " * 300

#: name -> (queue arguments, persistent?, what the publisher waits for)
CASES: dict[str, tuple[dict[str, object], bool, str]] = {
    "classic-prio9-tx": ({"x-max-priority": 9}, True, "tx"),
    "classic-prio9-confirm": ({"x-max-priority": 9}, True, "confirm"),
    "classic-confirm": ({}, True, "confirm"),
    "classic-v2-confirm": ({"x-queue-version": 2}, True, "confirm"),
    "classic-v2-prio9-confirm": ({"x-queue-version": 2, "x-max-priority": 9}, True, "confirm"),
    "classic-v2-prio9-tx": ({"x-queue-version": 2, "x-max-priority": 9}, True, "tx"),
    "classic-v2-prio9-tx1": ({"x-queue-version": 2, "x-max-priority": 9}, True, "tx1"),
    "classic-prio9-tx1": ({"x-max-priority": 9}, True, "tx1"),
    "classic-lazy-confirm": ({"x-queue-mode": "lazy"}, True, "confirm"),
    "quorum-confirm": ({"x-queue-type": "quorum"}, True, "confirm"),
    "quorum-tx": ({"x-queue-type": "quorum"}, True, "tx"),
    "classic-transient-confirm": ({"x-max-priority": 9}, False, "confirm"),
    "classic-prio9-none": ({"x-max-priority": 9}, True, "none"),
}


def publish(url: str, case: str, queue: str, n: int) -> list[float]:
    """Publish ``n`` messages one at a time; the seconds each took."""
    arguments, persistent, wait = CASES[case]
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.queue_declare(queue, durable=True, arguments=arguments)
    if wait in ("tx", "tx1"):
        ch.tx_select()
    elif wait == "confirm":
        ch.confirm_delivery()
    props = pika.BasicProperties(delivery_mode=2 if persistent else 1, priority=0)
    times = []
    for _ in range(n):
        start = time.perf_counter()
        if wait == "tx1":
            ch._impl.basic_publish("", queue, BODY, props)  # queued, not written: the commit writes both
        else:
            ch.basic_publish("", queue, BODY, props)
        if wait in ("tx", "tx1"):
            ch.tx_commit()
        times.append(time.perf_counter() - start)
    if wait == "none":
        conn.process_data_events(0)  # flush; the last bytes of a "none" run are not timed
    conn.close()
    return times


def _publish(job: tuple[str, str, str, int]) -> tuple[list[float], float, float]:
    start = time.perf_counter()
    times = publish(*job)
    return times, start, time.perf_counter()


def run(url: str, case: str, producers: int, n: int) -> str:
    queue = f"pub-{case}-{uuid.uuid4().hex[:6]}"
    with Pool(producers) as pool:
        results = pool.map(_publish, [(url, case, queue, n)] * producers)
    each = sorted(t for times, _, _ in results for t in times)
    wall = max(end for _, _, end in results) - min(start for _, start, _ in results)
    p90 = each[int(len(each) * 0.9)]
    rate = len(each) / wall
    return (
        f"{case:28} producers={producers:2}  median {statistics.median(each) * 1e3:6.3f} ms  "
        f"p90 {p90 * 1e3:6.3f} ms  {rate:8,.0f}/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="publishes per producer and case")
    parser.add_argument("--producers", default="1", help="comma-separated producer counts")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated cases: " + ", ".join(CASES))
    args = parser.parse_args()
    vhost = Vhost("pub")
    try:
        for producers in (int(p) for p in args.producers.split(",")):
            for case in args.cases.split(","):
                print(run(vhost.url, case, producers, args.n), flush=True)
    finally:
        vhost.delete()


if __name__ == "__main__":
    main()
