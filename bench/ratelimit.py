"""The global rate limit's accuracy: 1,000 runs of a task limited to 100/s over two workers (issue 17).

::

    python -m bench.ratelimit [--redis-url redis://127.0.0.1:6379/0]

Two ``conveyor worker tests.apps.workflows_app:app -c 2`` processes drain 1,000 queued runs of
``paced100`` (``rate_limit="100/s"``) on Redis, under a key prefix of their own that is deleted
afterwards. Each run notes its start time; the rate is (runs - burst) / (last start - first start),
the bucket's burst of 10 tokens being free. Target: within 5% of 100/s over the 10 s.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RUNS = 1000
RATE = 100.0
BURST = 10


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ratelimit", description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="a Redis the workers share")
    args = parser.parse_args(argv)
    prefix = f"bench-rate-{uuid.uuid4().hex[:8]}"
    records = Path(tempfile.mkdtemp(prefix="bench-rate-"))
    env = dict(os.environ, E2E_RECORD_DIR=str(records), PYTHONPATH=str(REPO_ROOT))
    env["CONVEYOR_BROKER_URL"] = f"{args.redis_url}?prefix={prefix}"
    env.pop("CONVEYOR_BACKEND_URL", None)
    os.environ.update(CONVEYOR_BROKER_URL=env["CONVEYOR_BROKER_URL"], E2E_RECORD_DIR=str(records))
    sys.path.insert(0, str(REPO_ROOT))
    from tests.apps import workflows_app

    from conveyor import App

    app = App("bench-rate")
    messages = [workflows_app.paced100.message((i,)) for i in range(RUNS)]
    app.send(messages)
    command = [sys.executable, "-m", "conveyor", "worker", "tests.apps.workflows_app:app", "-c", "2"]
    workers = [
        subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for _ in range(2)
    ]
    try:
        for message in messages:
            app.result(message.id).get(timeout=120)
    finally:
        for worker in workers:
            os.killpg(worker.pid, signal.SIGTERM)
        for worker in workers:
            worker.wait(30)
        _forget(args.redis_url, prefix)
    lines = (records / "paced100.runs").read_text().splitlines()
    starts = sorted(float(line.split()[1]) for line in lines)
    pids = {line.split()[0] for line in lines}
    span = starts[-1] - starts[0]
    rate = (len(starts) - BURST) / span
    windows = [sum(1 for t in starts if s <= t < s + 1) for s in starts if s + 1 <= starts[-1]]
    off = abs(rate - RATE) / RATE * 100
    print(
        f"rate-limit 100/s: {len(starts)} runs over {span:.2f} s in {len(pids)} worker children: {rate:.1f}/s "
        f"({off:.1f}% off, target 5%); busiest second {max(windows)}, quietest {min(windows)}"
    )
    return 0 if off <= 5 else 1


def _forget(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"*{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


if __name__ == "__main__":
    sys.exit(main())
