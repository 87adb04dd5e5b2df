"""Tasks the end-to-end tests run in a real worker process.

Each execution appends a line to a file in ``E2E_RECORD_DIR`` (one file per tag), so a test can
count how many times a task ran, whatever broker carried it. ``CONVEYOR_BROKER_URL`` picks the broker.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from conveyor import App

app = App("e2e")

if "E2E_BACKEND_RETRY_FOR" in os.environ:  # a backend outage test: fail fast instead of retrying 5 s per call
    from conveyor.backends.redis import RedisResultBackend

    RedisResultBackend.retry_for = float(os.environ["E2E_BACKEND_RETRY_FOR"])


def _record_dir() -> Path:
    return Path(os.environ["E2E_RECORD_DIR"])


def runs_of(record_dir: Path, tag: str) -> int:
    """How many times the task tagged ``tag`` started."""
    path = record_dir / f"{tag}.runs"
    return len(path.read_text().splitlines()) if path.exists() else 0


def release(record_dir: Path, tag: str) -> None:
    """End the sleep of every run of ``record`` tagged ``tag``, running or to come: a rerun need not wait it out."""
    (record_dir / f"{tag}.release").touch()


@app.task(name="record")
def record(tag: str, sleep: float = 0.0) -> str:
    """Note that this run started (with the pid running it), sleep (less once the test released the tag), return it."""
    with (_record_dir() / f"{tag}.runs").open("a") as f:
        f.write(f"{os.getpid()}\n")
    released = _record_dir() / f"{tag}.release"
    deadline = time.monotonic() + sleep
    while (left := deadline - time.monotonic()) > 0 and not released.exists():
        time.sleep(min(left, 0.05))
    return tag


@app.task(name="boom")
def boom(tag: str) -> None:
    with (_record_dir() / f"{tag}.runs").open("a") as f:
        f.write(f"{os.getpid()}\n")
    raise RuntimeError(f"boom {tag}")


@app.task(name="boom_retried", retries=1, backoff=0.05)
def boom_retried(tag: str) -> None:
    """Fail twice: retried once (at once, nearly), then failed for good."""
    raise RuntimeError(f"boom {tag}")


@app.task(name="hang", time_limit=1.0)
def hang(tag: str) -> None:
    with (_record_dir() / f"{tag}.runs").open("a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(60)


@app.task(name="doomed", dead_letter_on_failure=True)
def doomed(tag: str) -> None:
    """Fail for good: the message goes to the dead-letter queue, the traceback to the result."""
    raise RuntimeError(f"doomed {tag}")


@app.task(name="poison")
def poison(tag: str) -> None:
    """Kill the process running it (kill -9 of itself): each delivery takes a worker child down."""
    with (_record_dir() / f"{tag}.runs").open("a") as f:
        f.write(f"{os.getpid()}\n")
    os.kill(os.getpid(), signal.SIGKILL)


@app.task(name="mark", ignore_result=True)
def mark(i: int, sleep: float = 0.0) -> None:
    """Append ``i`` to this process's marks file: one line per execution, for exactly-once counting."""
    if sleep:
        time.sleep(sleep)
    with (_record_dir() / f"marks-{os.getpid()}.txt").open("a") as f:
        f.write(f"{i}\n")


def marks(record_dir: Path) -> list[int]:
    """Every ``mark`` execution recorded so far, across processes."""
    found: list[int] = []
    for path in record_dir.glob("marks-*.txt"):
        found += [int(line) for line in path.read_text().split()]
    return found


@app.task(name="fan_out", soft_time_limit=0.5)
def fan_out(tag: str) -> None:
    """Record the start, then send ``mark`` tasks and report progress until the soft time limit stops it.

    Each send and each progress report is a write; when another process holds the SQLite write lock,
    the soft limit fires while one of them waits for it (issue 11, item 1).
    """
    from conveyor.context import current_context

    with (_record_dir() / f"{tag}.runs").open("a") as f:
        f.write(f"{os.getpid()}\n")
    for i in range(1_000_000):
        mark.delay(-1)
        current_context().progress(i / 1_000_000, "fanning out")
        time.sleep(0.01)


class Unprintable(ValueError):
    """An exception that cannot be rendered: ``str()`` and ``repr()`` both raise."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken")

    def __repr__(self) -> str:
        raise RuntimeError("__repr__ is broken")


@app.task(name="unprintable", retries=0)
def unprintable(tag: str) -> None:
    """Record the run, then raise an exception whose ``__str__`` raises (issue 11, item 11)."""
    with (_record_dir() / f"{tag}.runs").open("a") as f:
        f.write(f"{os.getpid()}\n")
    raise Unprintable("secret")


@app.task(name="segfault")
def segfault(tag: str) -> None:
    """Record the run, then crash the process with a real segmentation fault (a NULL read in C)."""
    import ctypes

    with (_record_dir() / f"{tag}.runs").open("a") as f:
        f.write(f"{os.getpid()}\n")
    ctypes.string_at(0)


@app.task(name="gil_hold")
def gil_hold(tag: str, seconds: int) -> str:
    """Record the run, then call libc ``sleep`` with the GIL held: every thread of the process stalls."""
    import ctypes

    with (_record_dir() / f"{tag}.runs").open("a") as f:
        f.write(f"{os.getpid()}\n")
    ctypes.PyDLL(None).sleep(seconds)
    return tag


@app.task(name="gil_sleep")
def gil_sleep(tag: str, seconds: int) -> str:
    """Hold the GIL for ``seconds`` (libc sleep called through PyDLL): the process's other threads starve."""
    import ctypes

    with (_record_dir() / f"{tag}.runs").open("a") as f:
        f.write(f"{os.getpid()} start {time.time():.3f}\n")
    ctypes.PyDLL(None).sleep(seconds)
    with (_record_dir() / f"{tag}.ends").open("a") as f:
        f.write(f"{os.getpid()} end {time.time():.3f}\n")
    return tag


@app.task(name="async_record")
async def async_record(tag: str) -> str:
    """The async twin of ``record``: note the run, return the tag."""
    with (_record_dir() / f"{tag}.runs").open("a") as f:
        f.write(f"{os.getpid()}\n")
    return tag


# -- async twins, for the asyncio pool (--pool asyncio) ------------------------------------------


@app.task(name="async_nap")
async def async_nap(tag: str, seconds: float = 0.0) -> str:
    """Note the run (with the pid running it), await ``seconds``, note the end, return the tag."""
    import asyncio

    with (_record_dir() / f"{tag}.runs").open("a") as f:
        f.write(f"{os.getpid()}\n")
    await asyncio.sleep(seconds)
    with (_record_dir() / f"{tag}.ends").open("a") as f:
        f.write(f"{os.getpid()}\n")
    return tag


@app.task(name="async_mark", ignore_result=True)
async def async_mark(i: int, seconds: float = 0.0) -> None:
    """Await ``seconds``, then append ``i`` to this process's marks file (see :func:`marks`)."""
    import asyncio

    await asyncio.sleep(seconds)
    with (_record_dir() / f"marks-{os.getpid()}.txt").open("a") as f:
        f.write(f"{i}\n")


@app.task(name="async_hang", time_limit=1.0)
async def async_hang(tag: str) -> None:
    """Note the run, then await far past the hard time limit (the pool cancels it)."""
    import asyncio

    with (_record_dir() / f"{tag}.runs").open("a") as f:
        f.write(f"{os.getpid()}\n")
    await asyncio.sleep(60)


@app.task(name="async_soft", soft_time_limit=0.5, retries=0)
async def async_soft(tag: str) -> None:
    """Note the run, then await past the soft time limit: TimeLimitExceeded, after the cleanup ran."""
    import asyncio

    with (_record_dir() / f"{tag}.runs").open("a") as f:
        f.write(f"{os.getpid()}\n")
    try:
        await asyncio.sleep(60)
    finally:
        with (_record_dir() / f"{tag}.cleanup").open("a") as f:
            f.write(f"{os.getpid()}\n")


@app.task(name="async_blocker", time_limit=1.0)
async def async_blocker(tag: str) -> None:
    """Block the event loop itself (a sync sleep in a coroutine) past the hard time limit."""
    with (_record_dir() / f"{tag}.runs").open("a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(30)
