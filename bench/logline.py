"""The in-process CPU cost of the worker's INFO line per task, before and after docs/logging.md's changes.

``python -m bench.logline [--lines N] [--runs 3]``: logs N lines of ``task %s[%s] succeeded in %.4fs`` to
a file, the way a worker did before (``log.info`` through a ``StreamHandler`` and a plain ``Formatter``
with ``asctime``: a caller lookup, a ``strftime`` and a flush per line) and the way it does now
(:func:`conveyor.logging.quick_log` through a ``BufferedStreamHandler`` and a ``LineFormatter``), and
prints the median CPU microseconds per line of each. Runs in conveyor's own interpreter, no server.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

from conveyor.logging import BufferedStreamHandler, LineFormatter, install_task_fields, quick_log

OLD_FORMAT = "%(asctime)s %(levelname)-7s [%(processName)s] %(message)s"
MESSAGE = "task %s[%s] succeeded in %.4fs"
TASK_ID = "3f0c9a3e5b7d4c1f8e2a6b9d0c4e7f12"


def _logger(handler: logging.Handler) -> logging.Logger:
    log = logging.getLogger("bench.logline")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.INFO)
    return log


def old_way(path: Path, lines: int) -> float:
    """CPU seconds for ``lines`` lines the way the worker logged before."""
    with path.open("w") as stream:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter(OLD_FORMAT))
        log = _logger(handler)
        start = time.process_time()
        for _ in range(lines):
            log.info(MESSAGE, "bench.noop", TASK_ID, 0.0001)
        return time.process_time() - start


def new_way(path: Path, lines: int) -> float:
    """CPU seconds for ``lines`` lines the way the worker logs now (flushed at the end, as at exit)."""
    install_task_fields()
    with path.open("w") as stream:
        handler = BufferedStreamHandler(stream)
        handler.setFormatter(LineFormatter())
        log = _logger(handler)
        start = time.process_time()
        for _ in range(lines):
            quick_log(log, logging.INFO, MESSAGE, "bench.noop", TASK_ID, 0.0001)
        handler.flush()
        elapsed = time.process_time() - start
        handler.close()
        return elapsed


def per_line_us(lines: int, runs: int) -> tuple[list[float], list[float]]:
    """Microseconds of CPU per line, old and new way, in interleaved runs (a busy machine drifts between runs)."""
    old: list[float] = []
    new: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(runs):
            old.append(old_way(Path(tmp) / "old.txt", lines) / lines * 1e6)
            new.append(new_way(Path(tmp) / "new.txt", lines) / lines * 1e6)
    return old, new


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.logline", description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=100_000, help="lines per run [default: 100,000]")
    parser.add_argument("--runs", type=int, default=3, help="runs per way, median reported [default: 3]")
    args = parser.parse_args()
    old_runs, new_runs = per_line_us(args.lines, args.runs)
    old, new = statistics.median(old_runs), statistics.median(new_runs)
    print(f"before: {old:.2f} us CPU per line (runs: {', '.join(f'{r:.2f}' for r in old_runs)})")
    print(f"after:  {new:.2f} us CPU per line (runs: {', '.join(f'{r:.2f}' for r in new_runs)})")
    print(f"after / before: {new / old:.2f}")


if __name__ == "__main__":
    main()
