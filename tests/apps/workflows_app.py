"""Tasks the workflow end-to-end tests (tests/e2e/test_workflows.py) run in real worker processes.

Each run appends ``<pid> <start> <end>`` lines to a file per tag in ``E2E_RECORD_DIR``, so a test can
count runs and check overlaps whatever broker carried the task. ``CONVEYOR_BROKER_URL`` picks the broker.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from conveyor import App

app = App("workflows-e2e")


def _note(tag: str, started: float) -> None:
    with (Path(os.environ["E2E_RECORD_DIR"]) / f"{tag}.runs").open("a") as f:
        f.write(f"{os.getpid()} {started} {time.time()}\n")


def _start(tag: str) -> float:
    with (Path(os.environ["E2E_RECORD_DIR"]) / f"{tag}.starts").open("a") as f:
        f.write(f"{os.getpid()}\n")
    return time.time()


@app.task(name="member")
def member(i: int, sleep: float) -> int:
    """A chord member: note its start, sleep, note its end, return ``i * i``."""
    started = _start(f"member-{i}")
    time.sleep(sleep)
    _note(f"member-{i}", started)
    return i * i


@app.task(name="gather")
def gather(values: list[int]) -> list[int]:
    """A chord body: note every run."""
    _note("body", _start("body"))
    return values


@app.task(name="paced", rate_limit="20/s")
def paced(i: int) -> int:
    """A task under a global rate limit of 20 a second, shared by every worker."""
    _note("paced", time.time())
    return i


@app.task(name="paced100", rate_limit="100/s")
def paced100(i: int) -> int:
    """The 100/s measurement of docs/workflows.md (run by hand: it takes 10 s)."""
    _note("paced100", time.time())
    return i


@app.task(name="per_user", concurrency_key=lambda user, i, sleep: user, max_concurrency=1)
def per_user(user: str, i: int, sleep: float) -> int:
    """At most one run per user at a time, across workers."""
    started = _start(f"user-{user}")
    time.sleep(sleep)
    _note(f"user-{user}", started)
    return i
