"""`make demo`: a worker on the embedded SQLite default runs ~1,000 real tasks.

It starts ``conveyor worker examples.demo_tasks:app`` in a subprocess (two processes), enqueues
1,000 tasks of five kinds, follows them with a progress bar, prints a sample of results with the
measured rate, then stops the worker with SIGTERM, the graceful way, and checks it exited cleanly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
TOTAL = 1000
console = Console()


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="conveyor-demo-"))
    os.environ["CONVEYOR_BROKER_URL"] = f"sqlite:///{workdir / 'conveyor.db'}"
    sys.path.insert(0, str(ROOT))
    from examples import demo_tasks as t

    console.print(f"[bold]conveyor demo[/] broker: {t.app.settings.broker_url} (embedded SQLite, no server)")
    worker = start_worker(workdir / "worker.log")
    try:
        results = enqueue_all(t)
        started = time.perf_counter()
        follow(results)
        elapsed = time.perf_counter() - started
        show(results, elapsed)
    finally:
        stop_worker(worker)
    return 0


def start_worker(log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "conveyor", "worker", "examples.demo_tasks:app", "-c", "2"]
    console.print(f"starting a worker: [cyan]{' '.join(command[2:])}[/] (its log: {log})")
    with log.open("wb") as out:
        return subprocess.Popen(command, cwd=ROOT, env=os.environ.copy(), stdout=out, stderr=subprocess.STDOUT)


def enqueue_all(t: Any) -> list[tuple[str, Any]]:
    """Enqueue TOTAL tasks of five kinds; returns (kind, AsyncResult) pairs."""
    plan: list[tuple[str, Any]] = []
    started = time.perf_counter()
    for i in range(TOTAL):
        kind = i % 10
        if kind < 4:
            plan.append(("checksum", t.checksum.delay(f"document {i}")))
        elif kind < 6:
            plan.append(("count_primes", t.count_primes.delay(20_000 + i)))
        elif kind < 8:
            plan.append(("fetch_price", t.fetch_price.delay(f"SKU-{i}")))
        elif kind < 9:
            plan.append(("charge_card", t.charge_card.delay(i)))
        elif i % 100 == 9:
            plan.append(("reject_coupon", t.reject_coupon.delay(f"SPRING{i}")))
        else:
            plan.append(("checksum", t.checksum.delay(f"photo {i}")))
    rate = TOTAL / (time.perf_counter() - started)
    console.print(f"enqueued {TOTAL} tasks one by one with .delay() at [bold]{rate:,.0f}[/] tasks/s")
    return plan


def follow(plan: list[tuple[str, Any]]) -> None:
    """Wait for every task to finish, with a progress bar (bounded: 120 s)."""
    columns = (TextColumn("running"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("tasks", total=len(plan))
        for _, result in plan:
            result.get(timeout=120, propagate=False)
            progress.advance(bar)


def show(plan: list[tuple[str, Any]], elapsed: float) -> None:
    """Print one result of each kind (and one retried payment), the states, and the rate."""
    table = Table(title="a sample of results")
    for column in ("task", "id", "state", "attempts", "result"):
        table.add_column(column)
    samples: dict[str, Any] = {}
    for kind, result in plan:
        info = result.info
        samples.setdefault(kind, (result, info))
        if kind == "charge_card" and info.attempt:
            samples.setdefault("charge_card (retried)", (result, info))
    for kind, (result, info) in samples.items():
        value = repr(info.value) if info.state == "SUCCESS" else f"{info.error.type}: {info.error.message}"
        table.add_row(kind, result.id[:12], info.state, str(info.attempt + 1), value)
    console.print(table)
    states: dict[str, int] = {}
    for _, result in plan:
        states[str(result.state)] = states.get(str(result.state), 0) + 1
    console.print("states: " + ", ".join(f"{name} {count}" for name, count in sorted(states.items())))
    console.print(f"[bold green]{len(plan)} tasks finished in {elapsed:.2f}s: {len(plan) / elapsed:,.0f} tasks/s[/]")


def stop_worker(worker: subprocess.Popen[bytes]) -> None:
    console.print("stopping the worker gracefully (SIGTERM)")
    worker.send_signal(signal.SIGTERM)
    try:
        code = worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        worker.kill()
        raise SystemExit("the worker did not stop within 30 s") from None
    if code != 0:
        raise SystemExit(f"the worker exited with code {code}")
    console.print("worker stopped cleanly")


if __name__ == "__main__":
    raise SystemExit(main())
