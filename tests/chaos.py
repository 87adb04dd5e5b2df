"""Chaos run: kill -9 worker children and whole workers while thousands of tasks run, then audit.

::

    python -m tests.chaos --broker redis --tasks 5000 --seconds 60

Every ``chaos`` task (``tests/apps/e2e_app.py``) appends ``i pid`` to one log file when an
execution starts and ``i pid done`` when it ends. Meanwhile a driver ``kill -9``s a random child
of a random worker, and every few kills a whole worker (its supervisor, frozen with SIGSTOP first
so it cannot fork, then every child psutil lists), starting a new worker in its place. Every pid
it kills is recorded. When the tasks are done and the broker is empty, the workers stop and the
log is audited (:func:`audit`, pure):

- every task completed at least once;
- an execution that never completed ran in a killed pid;
- a task ran again only right after an execution in a killed pid (a duplicate explained by a kill).

``tests/e2e/test_chaos.py`` runs a smaller version on every e2e broker kind. To add a broker kind
to the script, add a URL maker to :data:`BROKERS`.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import itertools
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

from conveyor import App
from tests.apps.e2e_app import CHAOS_LOG
from tests.e2e.conftest import ROOT, WorkerProcess, wait_until


@dataclasses.dataclass(frozen=True, slots=True)
class ChaosPlan:
    """How hard to shake the workers, and for how long.

    Attributes:
        tasks: chaos tasks to enqueue.
        seconds: how long the driver keeps killing (it stops earlier once every task completed).
        settle: seconds allowed after the kills stop for the last tasks to complete.
        workers: worker processes kept running (each replaced when killed whole).
        concurrency: children per worker.
        lease: the workers' lease in seconds; a whole-worker kill is recovered after it.
        task_ms: each task sleeps a random time in this range, in milliseconds.
        pause: seconds between two kills, drawn at random from this range.
        worker_kill_every: every n-th kill takes a whole worker down instead of one child.
        seed: seed of the random choices (victims, pauses, task durations).
    """

    tasks: int = 2000
    seconds: float = 30.0
    settle: float = 30.0
    workers: int = 2
    concurrency: int = 2
    lease: float = 2.0
    task_ms: tuple[float, float] = (1.0, 5.0)
    pause: tuple[float, float] = (0.05, 0.25)
    worker_kill_every: int = 5
    seed: int = 0


@dataclasses.dataclass(slots=True)
class ChaosReport:
    """What the audit found; ``problems`` is empty when the promise held."""

    tasks: int
    executions: int = 0
    completed: int = 0
    duplicates: int = 0
    explained: int = 0
    child_kills: int = 0
    worker_kills: int = 0
    seconds: float = 0.0
    problems: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        """The figures, one per line, as docs/guarantees.md quotes them."""
        return "\n".join(
            [
                f"tasks:                          {self.tasks}",
                f"executions:                     {self.executions}",
                f"tasks completed:                {self.completed}",
                f"duplicates (extra executions):  {self.duplicates}",
                f"duplicates explained by a kill: {self.explained}",
                f"children killed (kill -9):      {self.child_kills}",
                f"whole workers killed (kill -9): {self.worker_kills}",
                f"seconds:                        {self.seconds:.1f}",
                f"problems:                       {len(self.problems)}",
                *(f"  - {p}" for p in self.problems[:20]),
            ]
        )


@dataclasses.dataclass(slots=True)
class _Execution:
    pid: int
    done: bool = False


def audit(log_lines: list[str], killed: set[int], tasks: int) -> ChaosReport:
    """Check the execution log against the promise (pure).

    Args:
        log_lines: the chaos log, in the order the lines were appended.
        killed: every pid the driver killed.
        tasks: how many tasks were enqueued (ids 0 to tasks - 1).
    """
    runs = _executions(log_lines)
    report = ChaosReport(tasks)
    for i in range(tasks):
        executions = runs.get(i, [])
        report.executions += len(executions)
        report.completed += any(e.done for e in executions)
        report.duplicates += max(0, len(executions) - 1)
        report.problems += _problems_of(i, executions, killed)
        report.explained += sum(1 for before in executions[:-1] if before.pid in killed)
    return report


def _executions(log_lines: list[str]) -> dict[int, list[_Execution]]:
    runs: dict[int, list[_Execution]] = collections.defaultdict(list)
    for line in log_lines:
        fields = line.split()
        i, pid = int(fields[0]), int(fields[1])
        if len(fields) == 2:
            runs[i].append(_Execution(pid))
        else:  # the oldest open execution of this task in this pid ended
            next(e for e in runs[i] if e.pid == pid and not e.done).done = True
    return runs


def _problems_of(i: int, executions: list[_Execution], killed: set[int]) -> list[str]:
    problems = []
    if not any(e.done for e in executions):
        problems.append(f"task {i} never completed ({len(executions)} execution(s))")
    for e in executions:
        if not e.done and e.pid not in killed:
            problems.append(f"task {i} was interrupted in pid {e.pid}, which the driver did not kill")
    for before, after in itertools.pairwise(executions):
        if before.pid not in killed:
            problems.append(f"task {i} ran again in pid {after.pid} after a run in live pid {before.pid}")
    return problems


class Driver:
    """Starts workers, kills children and whole workers, and remembers every pid it killed."""

    def __init__(self, env: dict[str, str], logs: Path, plan: ChaosPlan, rng: random.Random) -> None:
        self.env = env
        self.logs = logs
        self.plan = plan
        self.rng = rng
        self.workers: list[WorkerProcess] = []
        self.killed: set[int] = set()
        self.child_kills = 0
        self.worker_kills = 0
        self._started = 0

    def start_worker(self) -> None:
        """Start one worker and wait until it says it is ready."""
        args = ["-c", str(self.plan.concurrency)]
        worker = WorkerProcess(self.env, args, self.logs / f"worker-{self._started}.log")
        self._started += 1
        self.workers.append(worker)
        worker.wait_for_log("ready", timeout=30)

    def strike(self, number: int) -> None:
        """The ``number``-th kill: one child, or every ``worker_kill_every``-th time a whole worker."""
        if number % self.plan.worker_kill_every == 0:
            self.kill_worker()
        else:
            self.kill_child()

    def kill_child(self) -> None:
        """kill -9 a random child of a random worker (the supervisor starts a new one)."""
        worker = self.rng.choice(self.workers)
        children = psutil.Process(worker.proc.pid).children()
        if not children:
            return  # the supervisor is between a death and a restart
        victim = self.rng.choice(children)
        self.killed.add(victim.pid)
        with contextlib.suppress(psutil.NoSuchProcess):
            victim.kill()
            self.child_kills += 1

    def kill_worker(self) -> None:
        """kill -9 a random worker, supervisor and children, and start a new worker in its place."""
        worker = self.rng.choice(self.workers)
        supervisor = psutil.Process(worker.proc.pid)
        supervisor.suspend()  # SIGSTOP: it cannot fork a child we would miss
        children = supervisor.children(recursive=True)
        self.killed.update([supervisor.pid, *(c.pid for c in children)])
        worker.proc.kill()
        worker.proc.wait(timeout=10)
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        self.worker_kills += 1
        self.workers.remove(worker)
        self.start_worker()

    def stop_all(self) -> None:
        """Stop every worker gracefully (SIGTERM), hard if one does not stop in time."""
        for worker in self.workers:
            if worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGTERM)
        for worker in self.workers:
            try:
                worker.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.proc.wait(timeout=10)


def run_chaos(url: str, workdir: Path, plan: ChaosPlan, backend: str | None = None) -> ChaosReport:
    """Enqueue ``plan.tasks`` chaos tasks on ``url``, shake the workers, wait, stop and audit.

    ``backend`` is the result backend URL when it is not the broker's engine (RabbitMQ's).
    """
    from tests.apps import e2e_app

    records = workdir / "records"
    records.mkdir(parents=True, exist_ok=True)
    env = _worker_env(url, backend, records, plan)
    rng = random.Random(plan.seed)
    app = App("chaos", broker=url, backend=backend)
    task = e2e_app.app.tasks["chaos"]
    low, high = plan.task_ms
    for start in range(0, plan.tasks, 1000):
        batch = range(start, min(plan.tasks, start + 1000))
        app.send([task.message((i, rng.uniform(low, high))) for i in batch])
    driver = Driver(env, workdir, plan, rng)
    began = time.monotonic()
    try:
        for _ in range(plan.workers):
            driver.start_worker()
        _shake(driver, records / CHAOS_LOG, plan)
        wait_until(lambda: _completed(records / CHAOS_LOG) >= plan.tasks, plan.settle, "every task to complete")
        wait_until(lambda: _empty(app), plan.settle, "the broker to hold no message")
    finally:
        driver.stop_all()
        app.close()
    report = audit(_lines(records / CHAOS_LOG), driver.killed, plan.tasks)
    report.child_kills, report.worker_kills = driver.child_kills, driver.worker_kills
    report.seconds = time.monotonic() - began
    return report


def _shake(driver: Driver, log: Path, plan: ChaosPlan) -> None:
    """Kill at random intervals until every task completed or ``plan.seconds`` passed."""
    deadline = time.monotonic() + plan.seconds
    number = 1
    while time.monotonic() < deadline and _completed(log) < plan.tasks:
        time.sleep(driver.rng.uniform(*plan.pause))  # the chaos cadence, not a synchronisation
        driver.strike(number)
        number += 1


def _worker_env(url: str, backend: str | None, records: Path, plan: ChaosPlan) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    if backend is not None:
        env["CONVEYOR_BACKEND_URL"] = backend
    env.update(
        CONVEYOR_BROKER_URL=url,
        CONVEYOR_LEASE=str(plan.lease),
        CONVEYOR_SHUTDOWN_GRACE="10",
        # A task killed by chance five times is not poison here; do not dead-letter it.
        CONVEYOR_MAX_DELIVERIES="100",
        CONVEYOR_LOG_LEVEL="INFO",
        E2E_RECORD_DIR=str(records),
        PYTHONPATH=str(ROOT),
    )
    return env


def _lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def _completed(log: Path) -> int:
    return len({line.split()[0] for line in _lines(log) if line.endswith(" done")})


def _empty(app: App) -> bool:
    return all(s.ready == s.scheduled == s.in_flight == s.dead == 0 for s in app.broker.stats())


# -- the script ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _sqlite_url(workdir: Path) -> Iterator[tuple[str, str | None]]:
    yield f"sqlite:///{workdir / 'chaos.db'}", None


@contextlib.contextmanager
def _redis_url(workdir: Path) -> Iterator[tuple[str, str | None]]:
    from tests.conftest import REDIS_URL, redis_cleanup

    prefix = f"cvchaos-{uuid.uuid4().hex[:12]}"
    try:
        yield f"{REDIS_URL}?prefix={prefix}", None
    finally:
        redis_cleanup(prefix)


@contextlib.contextmanager
def _amqp_url(workdir: Path) -> Iterator[tuple[str, str | None]]:
    """A RabbitMQ vhost of this run (deleted afterwards), results in a SQLite file beside it."""
    from tests.conftest import amqp_url, rabbitmqctl

    vhost = f"cvchaos-{uuid.uuid4().hex[:12]}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield amqp_url(vhost), f"sqlite:///{workdir / 'results.db'}"
    finally:
        rabbitmqctl("delete_vhost", vhost)


#: Broker kind → a context manager giving an isolated broker URL and, where the broker is no result
#: store, a backend URL, under a work directory (and cleaning up).
BROKERS: dict[str, Callable[[Path], contextlib.AbstractContextManager[tuple[str, str | None]]]] = {
    "sqlite": _sqlite_url,
    "redis": _redis_url,
    "amqp": _amqp_url,
}


def main(argv: list[str] | None = None) -> int:
    """Run a chaos round from the shell; exit 1 if the audit found a problem."""
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__.split("\n")[0])
    parser.add_argument("--broker", choices=sorted(BROKERS), default="sqlite")
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to keep killing")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=2, help="children per worker")
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--task-ms", type=float, nargs=2, default=(1.0, 5.0), metavar=("LOW", "HIGH"))
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    plan = ChaosPlan(
        tasks=args.tasks,
        seconds=args.seconds,
        settle=max(60.0, args.tasks / 50),
        workers=args.workers,
        concurrency=args.concurrency,
        lease=args.lease,
        task_ms=tuple(args.task_ms),
        seed=seed,
    )
    with tempfile.TemporaryDirectory(prefix="conveyor-chaos-") as tmp, BROKERS[args.broker](Path(tmp)) as urls:
        print(f"chaos on {args.broker}: {plan}", flush=True)
        report = run_chaos(urls[0], Path(tmp), plan, backend=urls[1])
    print(report.summary())
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
