"""Chaos run: kill -9 worker children and whole workers, and inject other faults, while thousands of tasks run.

::

    python -m tests.chaos --broker redis --tasks 5000 --seconds 60
    python -m tests.chaos --broker sqlite --faults all
    python -m tests.chaos --broker redis --faults gil          # one fault kind alone
    python -m tests.chaos --broker redis --pool thread -c 8    # workers of one child with 8 threads

Every chaos task (``tests/apps/chaos_app.py``) appends ``i pid`` to one log file when an execution
starts and ``i pid done`` when it ends (``i pid crash`` when a poison task takes its process down).
The fault kinds (``--faults``, default ``kill``; see ``tests/chaos_faults.py``):

- ``kill``: a driver ``kill -9``s a random child of a random worker, and every few kills a whole
  worker (its supervisor, frozen with SIGSTOP first so it cannot fork, then every child psutil
  lists), starting a new worker in its place. Every pid it kills is recorded.
- ``backend``: the result backend is a private redis-server, killed and restarted several times.
- ``stall``: the broker stops answering for longer than the lease (SIGSTOP of a private
  redis-server; the SQLite write lock held by the driver; skipped on amqp), then goes on.
- ``poison``: a few tasks crash their child every time (segfault or ``os._exit``); they must end
  in the dead-letter queue, and nothing else may.
- ``gil``: a few tasks hold the GIL (libc ``usleep`` through ``ctypes.PyDLL``) longer than the lease.
- ``collide``: the workers run under ``unshare --pid --fork``: each supervisor is pid 1, with one
  host name; children in them are killed now and then.

When the tasks are done and the broker is empty, the workers stop and the log is audited
(``tests/chaos_audit.py``, pure). ``tests/e2e/test_chaos.py`` runs smaller versions on every
e2e broker kind. To add a broker kind to the script, add a URL maker to :data:`BROKERS`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

from conveyor import App, State
from conveyor.message import Message
from conveyor.worker import POOLS
from tests.apps import chaos_app
from tests.chaos_audit import ChaosReport, audit, executions
from tests.chaos_faults import (
    FAULTS,
    ChaosWorker,
    FaultCounts,
    Injector,
    Servers,
    SqliteLockHolder,
    fault_servers,
    parse_faults,
)
from tests.e2e.conftest import ROOT

__all__ = ["BROKERS", "FAULTS", "ChaosPlan", "ChaosReport", "Servers", "audit", "fault_servers", "run_chaos"]


@dataclasses.dataclass(frozen=True, slots=True)
class ChaosPlan:
    """How hard to shake the workers, with which faults, and for how long.

    Attributes:
        tasks: chaos tasks to enqueue (poison and GIL tasks included).
        seconds: how long the driver keeps killing (it stops earlier once every task completed
            and every fault was injected as often as planned).
        settle: seconds allowed after the faults stop for the last tasks to complete.
        workers: worker processes kept running (each replaced when killed whole).
        concurrency: slots per worker: children (process pool) or threads of one child (thread pool).
        pool: the workers' pool (``--pool``).
        lease: the workers' lease in seconds; a whole-worker kill is recovered after it.
        task_ms: each task sleeps a random time in this range, in milliseconds.
        pause: seconds between two kills, drawn at random from this range.
        worker_kill_every: every n-th kill takes a whole worker down instead of one child.
        seed: seed of the random choices (victims, pauses, task durations, fault timing).
        faults: the fault kinds to inject (see :data:`tests.chaos_faults.FAULTS`).
        poison: poison tasks mixed into the load (``poison`` fault).
        gil: GIL-holding tasks mixed into the load (``gil`` fault).
        gil_seconds: how long each holds the GIL; more than ``lease``.
        outages: result backend outages (``backend`` fault), each lasting ``outage_seconds``.
        outage_seconds: range of one outage's length.
        stalls: broker stalls (``stall`` fault), each lasting ``stall_seconds``.
        stall_seconds: range of one stall's length; more than ``lease``.
        fault_gap: seconds between two outages or two stalls (and before the first).
        max_deliveries: the workers' max_deliveries; None means 100 (kill -9 may hit a task
            several times by chance: not poison), or 8 with the ``poison`` fault (so the poison is
            buried within the run) and the ``backend`` fault (so an outage that wrongly counts
            deliveries buries innocent tasks, which the audit then names).
    """

    tasks: int = 2000
    seconds: float = 30.0
    settle: float = 30.0
    workers: int = 2
    concurrency: int = 2
    pool: str = "process"
    lease: float = 2.0
    task_ms: tuple[float, float] = (1.0, 5.0)
    pause: tuple[float, float] = (0.05, 0.25)
    worker_kill_every: int = 5
    seed: int = 0
    faults: frozenset[str] = frozenset({"kill"})
    poison: int = 3
    gil: int = 2
    gil_seconds: float = 3.0
    outages: int = 3
    outage_seconds: tuple[float, float] = (1.0, 3.0)
    stalls: int = 2
    stall_seconds: tuple[float, float] = (2.5, 3.5)
    fault_gap: tuple[float, float] = (0.3, 1.5)
    max_deliveries: int | None = None

    def deliveries(self) -> int:
        """The workers' max_deliveries."""
        if self.max_deliveries is not None:
            return self.max_deliveries
        return 8 if self.faults & {"poison", "backend"} else 100


class Driver:
    """Starts workers, kills children and whole workers, and remembers every pid it killed."""

    def __init__(
        self, env: dict[str, str], logs: Path, plan: ChaosPlan, rng: random.Random, spare: Callable[[], set[int]]
    ) -> None:
        self.env = env
        self.spare = spare
        self.log = logs / "records" / chaos_app.CHAOS_LOG
        self.logs = logs
        self.plan = plan
        self.rng = rng
        self.workers: list[ChaosWorker] = []
        self.killed: dict[int, int] = {}  # pid → log lines just before it was killed
        self.counts = FaultCounts()
        self._started = 0

    def start_worker(self) -> None:
        """Start one worker (in its own pid namespace with ``collide``) and wait until it is ready."""
        args = ["--pool", self.plan.pool, "-c", str(self.plan.concurrency)]
        namespaced = "collide" in self.plan.faults
        log = self.logs / f"worker-{self._started}.log"
        worker = ChaosWorker(self.env, args, log, namespaced=namespaced)
        self._started += 1
        self.counts.namespaced_workers += namespaced
        self.workers.append(worker)
        worker.wait_for_log("ready", timeout=30)
        if namespaced:  # the same id for every worker: the collision the fault is about
            self.counts.namespaced_ids.add(worker.worker_id())

    def lines(self) -> int:
        """How many lines the chaos log has now: the audit's clock."""
        return len(_lines(self.log))

    def strike(self, number: int) -> None:
        """The ``number``-th kill: one child, or every ``worker_kill_every``-th time a whole worker.

        With ``collide`` but without ``kill``, children only: the deaths that make one supervisor
        release its owner id, which the other worker's child shares.
        """
        if "kill" in self.plan.faults and number % self.plan.worker_kill_every == 0:
            self.kill_worker()
        elif self.plan.faults & {"kill", "collide"}:
            self.kill_child()

    def kill_child(self) -> None:
        """kill -9 a random child of a random worker (the supervisor starts a new one)."""
        worker = self.rng.choice(self.workers)
        spared = self.spare()
        children = [c for c in worker.supervisor().children() if c.pid not in spared]
        if not children:
            return  # the supervisor is between a death and a restart, or runs only spared tasks
        victim = self.rng.choice(children)
        self.killed.setdefault(victim.pid, self.lines())
        with contextlib.suppress(psutil.NoSuchProcess):
            victim.kill()
            self.counts.child_kills += 1
            self.counts.collide_kills += worker.namespaced

    def kill_worker(self) -> None:
        """kill -9 a random worker, supervisor and children, and start a new worker in its place."""
        spared = self.spare()
        candidates = [w for w in self.workers if not spared & {c.pid for c in w.supervisor().children()}]
        if not candidates:
            return
        worker = self.rng.choice(candidates)
        supervisor = worker.supervisor()
        supervisor.suspend()  # SIGSTOP: it cannot fork a child we would miss
        children = supervisor.children(recursive=True)
        lines = self.lines()
        for pid in (supervisor.pid, *(c.pid for c in children)):
            self.killed.setdefault(pid, lines)
        for process in (supervisor, *children):
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        worker.proc.wait(timeout=10)
        self.counts.worker_kills += 1
        self.workers.remove(worker)
        self.start_worker()

    def stop_all(self) -> None:
        """Stop every worker gracefully (SIGTERM), hard if one does not stop in time."""
        for worker in self.workers:
            worker.terminate()
        for worker in self.workers:
            try:
                worker.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(psutil.NoSuchProcess):
                    worker.supervisor().kill()
                worker.proc.kill()
                worker.proc.wait(timeout=10)


def run_chaos(servers: Servers, workdir: Path, plan: ChaosPlan) -> ChaosReport:
    """Enqueue ``plan.tasks`` chaos tasks, shake the workers and inject the faults, wait, stop and audit."""
    records = workdir / "records"
    records.mkdir(parents=True, exist_ok=True)
    log = records / chaos_app.CHAOS_LOG
    rng = random.Random(plan.seed)
    app = App("chaos", broker=servers.broker, backend=servers.backend)
    load = _Load.build(plan, rng)
    ids = _enqueue(app, load.messages(plan, rng))
    driver = Driver(_worker_env(servers, records, plan), workdir, plan, rng, lambda: _running(log, load.gil))
    injectors = _injectors(servers, plan, log)
    problems: list[str] = []
    began = time.monotonic()
    try:
        for _ in range(plan.workers):
            driver.start_worker()
        for injector in injectors:
            injector.start()
        _shake(driver, log, load, injectors, plan)
        for injector in injectors:
            injector.halt()
        problems += [i.error for i in injectors if i.error]
        problems += _settle(app, log, load, ids, plan.settle)
    finally:
        for injector in injectors:
            injector.halt()
        driver.stop_all()
    dead = _dead_ids(app, ids)
    report = audit(_lines(log), driver.killed, plan.tasks, poison=load.poison, gil=load.gil, dead=dead)
    if "backend" in plan.faults:
        report.problems += _result_problems(app, ids, load)
    app.close()
    report.problems = problems + report.problems
    report.faults, report.counts, report.seconds = plan.faults, driver.counts, time.monotonic() - began
    _count(report, _lines(log), load, dead, injectors, servers)
    return report


@dataclasses.dataclass(frozen=True, slots=True)
class _Load:
    """Which task ids are poison and which hold the GIL; the rest are ordinary short tasks."""

    tasks: int
    poison: frozenset[int]
    gil: frozenset[int]
    stored: bool

    @classmethod
    def build(cls, plan: ChaosPlan, rng: random.Random) -> _Load:
        poison = plan.poison if "poison" in plan.faults else 0
        gil = plan.gil if "gil" in plan.faults else 0
        special = rng.sample(range(plan.tasks), poison + gil)
        return cls(plan.tasks, frozenset(special[:poison]), frozenset(special[poison:]), "backend" in plan.faults)

    def messages(self, plan: ChaosPlan, rng: random.Random) -> Iterator[Message]:
        tasks = chaos_app.app.tasks
        ordinary = tasks["chaos_stored" if self.stored else "chaos_plain"]
        for i in range(self.tasks):
            if i in self.poison:
                yield tasks["chaos_poison"].message((i,))
            elif i in self.gil:
                yield tasks["chaos_gil"].message((i, plan.gil_seconds))
            else:
                yield ordinary.message((i, rng.uniform(*plan.task_ms)))

    def must_complete(self) -> int:
        return self.tasks - len(self.poison)


def _enqueue(app: App, messages: Iterator[Message]) -> list[str]:
    """Send in batches of 1,000; task i lives under ``ids[i]``."""
    ids: list[str] = []
    batch: list[Message] = []
    for message in messages:
        batch.append(message)
        if len(batch) == 1000:
            ids += app.send(batch)
            batch = []
    return ids + (app.send(batch) if batch else [])


def _injectors(servers: Servers, plan: ChaosPlan, log: Path) -> list[Injector]:
    """One thread per fault kind that breaks and repairs a server on its own schedule."""
    injectors = []

    def note(text: str) -> None:  # one O_APPEND write, like the tasks' lines
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"# {text}\n".encode())
        finally:
            os.close(fd)

    if servers.backend_redis is not None:
        backend = servers.backend_redis
        actions = (backend.kill, backend.start)
        outages, seed = (plan.outages, plan.fault_gap, plan.outage_seconds), plan.seed + 1
        injectors.append(Injector("backend outage", *outages, actions, seed, note))
    stall: tuple[Callable[[], None], Callable[[], None]] | None = None
    if servers.broker_redis is not None:
        stall = (servers.broker_redis.freeze, servers.broker_redis.thaw)
    elif servers.broker_postgres is not None:
        stall = (servers.broker_postgres.freeze, servers.broker_postgres.thaw)
    elif servers.sqlite is not None:
        holder = SqliteLockHolder(servers.sqlite)
        stall = (holder.take, holder.release)
    if stall is not None:
        stalls = (plan.stalls, plan.fault_gap, plan.stall_seconds)
        injectors.append(Injector("broker stall", *stalls, stall, plan.seed + 2, note))
    return injectors


def _shake(driver: Driver, log: Path, load: _Load, injectors: list[Injector], plan: ChaosPlan) -> None:
    """Kill at random intervals until every task completed and every injector is through, or ``plan.seconds`` passed."""
    deadline = time.monotonic() + plan.seconds
    number = 1
    while time.monotonic() < deadline:
        if _completed(log) >= load.must_complete() and all(i.finished() for i in injectors):
            return
        time.sleep(driver.rng.uniform(*plan.pause))  # the chaos cadence, not a synchronisation
        driver.strike(number)
        number += 1


def _settle(app: App, log: Path, load: _Load, ids: list[str], timeout: float) -> list[str]:
    """Wait for every task but the poison to complete and the broker to hold nothing but dead letters.

    A wait that times out is a problem of the run, named with what was still missing; the audit
    then says which task is where.
    """
    problems = []
    if not _wait(lambda: _completed(log) >= load.must_complete() or _dead(app) > len(load.poison), timeout):
        problems.append(f"timed out after {timeout:g} s: {_completed(log)} of {load.must_complete()} tasks completed")
    if not _wait(lambda: _idle(app), timeout):
        stats = [(s.queue, s.ready, s.scheduled, s.in_flight, s.dead) for s in app.broker.stats()]
        problems.append(
            f"timed out after {timeout:g} s waiting for an idle broker: "
            f"(queue, ready, scheduled, in flight, dead) {stats}"
        )
    return problems


def _wait(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def _worker_env(servers: Servers, records: Path, plan: ChaosPlan) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    if servers.backend is not None:
        env["CONVEYOR_BACKEND_URL"] = servers.backend
    env.update(
        CONVEYOR_BROKER_URL=servers.broker,
        CONVEYOR_LEASE=str(plan.lease),
        CONVEYOR_SHUTDOWN_GRACE="10",
        CONVEYOR_MAX_DELIVERIES=str(plan.deliveries()),
        CONVEYOR_LOG_LEVEL="INFO",
        E2E_RECORD_DIR=str(records),
        PYTHONPATH=str(ROOT),
    )
    return env


def _running(log: Path, ids: frozenset[int]) -> set[int]:
    """The pids running one of ``ids`` now: the kill storm spares them.

    A GIL-holding task runs for seconds; a storm that kills a child every few hundred ms would
    kill each of its runs, and it would never complete. Spared, it must run exactly once.
    """
    if not ids:
        return set()
    runs = executions(_lines(log))
    return {e.pid for i in ids for e in runs.get(i, []) if e.end is None}


def _lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def _completed(log: Path) -> int:
    return len({line.split()[0] for line in _lines(log) if line.endswith(" done") and not line.startswith("#")})


def _idle(app: App) -> bool:
    """Nothing ready, scheduled or in flight: every message was acknowledged or dead-lettered."""
    return all(s.ready == s.scheduled == s.in_flight == 0 for s in app.broker.stats())


def _dead(app: App) -> int:
    """Messages in the dead-letter queues: more than the poison, and a task waited on may never complete."""
    return sum(s.dead for s in app.broker.stats())


def _dead_ids(app: App, ids: list[str]) -> set[int]:
    index = {task_id: i for i, task_id in enumerate(ids)}
    return {index[d.id] for d in app.broker.dead_letters(limit=10_000) if d.id in index}


def _result_problems(app: App, ids: list[str], load: _Load) -> list[str]:
    """After backend outages, every task that stores a result must have SUCCESS in the backend."""
    problems = []
    for i, task_id in enumerate(ids):
        if i in load.poison or i in load.gil:
            continue
        state = app.result(task_id).state
        if state is not State.SUCCESS:
            problems.append(f"task {i}: result {state.name} in the backend after the outages, expected SUCCESS")
    return problems


def _count(
    report: ChaosReport, lines: list[str], load: _Load, dead: set[int], injectors: list[Injector], servers: Servers
) -> None:
    counts, runs = report.counts, executions(lines)
    counts.poison_tasks, counts.gil_tasks = len(load.poison), len(load.gil)
    counts.poison_crashes = sum(e.crashed for i in load.poison for e in runs.get(i, []))
    counts.poison_dead = len(dead & load.poison)
    counts.gil_executions = sum(len(runs.get(i, [])) for i in load.gil)
    counts.stall_kind = servers.stall_kind
    for injector in injectors:
        if injector.label == "backend outage":
            counts.outages, counts.outage_seconds = injector.done, injector.seconds
        else:
            counts.stalls, counts.stall_seconds = injector.done, injector.seconds


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
    from tests.conftest import amqp_url
    from tests.vhosts import rabbitmqctl

    vhost = f"cvchaos-{uuid.uuid4().hex[:12]}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield amqp_url(vhost), f"sqlite:///{workdir / 'results.db'}"
    finally:
        rabbitmqctl("delete_vhost", vhost)


@contextlib.contextmanager
def _amqp_quorum_url(workdir: Path) -> Iterator[tuple[str, str | None]]:
    """As ``_amqp_url``, on RabbitMQ quorum queues (``queue_type=quorum``)."""
    with _amqp_url(workdir) as (url, results):
        yield f"{url}?queue_type=quorum", results


@contextlib.contextmanager
def _postgres_url(workdir: Path) -> Iterator[tuple[str, str | None]]:
    """A PostgreSQL database of this run with a migrated schema (dropped afterwards); results in it too."""
    import psycopg

    from conveyor.brokers.postgres.migrate import migrate
    from tests.conftest import POSTGRES_URL

    name = f"cvchaos_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{POSTGRES_URL}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        migrate(f"{POSTGRES_URL}/{name}", "conveyor")
        yield f"{POSTGRES_URL}/{name}", None
    finally:
        with psycopg.connect(f"{POSTGRES_URL}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def _redis_sentinel_url(workdir: Path) -> Iterator[tuple[str, str | None]]:
    """A private Sentinel group (master, replica, three sentinels) of this run, killed afterwards.

    Its faults are the workers' (no failover here): the sentinels take the master for down only
    after 30 s of silence, so a server starved by a kill storm cannot start one.
    """
    from tests.ha_servers import sentinel_group

    (workdir / "sentinel").mkdir()
    with sentinel_group(workdir / "sentinel", down_after_ms=30000, failover=False) as group:
        yield f"{group.url}?prefix=chaos", None


@contextlib.contextmanager
def _redis_cluster_url(workdir: Path) -> Iterator[tuple[str, str | None]]:
    """A private 3-master Redis Cluster of this run, killed afterwards."""
    from tests.ha_servers import local_cluster

    (workdir / "cluster").mkdir()
    with local_cluster(workdir / "cluster") as cluster:
        yield f"{cluster.url}?prefix=chaos", None


#: Broker kind → a context manager giving an isolated broker URL and, where the broker is no result
#: store, a backend URL, under a work directory (and cleaning up).
BROKERS: dict[str, Callable[[Path], contextlib.AbstractContextManager[tuple[str, str | None]]]] = {
    "sqlite": _sqlite_url,
    "redis": _redis_url,
    "redis-sentinel": _redis_sentinel_url,
    "redis-cluster": _redis_cluster_url,
    "amqp": _amqp_url,
    "amqp-quorum": _amqp_quorum_url,
    "postgres": _postgres_url,
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__.split("\n")[0])
    parser.add_argument("--broker", choices=sorted(BROKERS), default="sqlite")
    parser.add_argument("--faults", type=parse_faults, default=frozenset({"kill"}), help=f"{','.join(FAULTS)} or all")
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to keep killing")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("-c", "--concurrency", type=int, default=2, help="slots per worker")
    parser.add_argument("--pool", choices=POOLS, default="process", help="the workers' pool")
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--task-ms", type=float, nargs=2, default=(1.0, 5.0), metavar=("LOW", "HIGH"))
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--poison", type=int, default=3, help="poison tasks (poison fault)")
    parser.add_argument("--gil", type=int, default=2, help="GIL-holding tasks (gil fault)")
    parser.add_argument("--gil-seconds", type=float, default=None, help="default: lease + 1")
    parser.add_argument("--outages", type=int, default=3, help="result backend outages (backend fault)")
    # Some outages longer than the Redis backend's 5 s retry_for, so result writes fail for good.
    parser.add_argument("--outage-seconds", type=float, nargs=2, default=(2.0, 7.0), metavar=("LOW", "HIGH"))
    parser.add_argument("--stalls", type=int, default=2, help="broker stalls (stall fault)")
    parser.add_argument("--stall-seconds", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"))
    parser.add_argument("--max-deliveries", type=int, default=None, help="default: 8 with poison or backend, else 100")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a chaos round from the shell; exit 1 if the audit found a problem."""
    args = _parser().parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    plan = ChaosPlan(
        tasks=args.tasks,
        seconds=args.seconds,
        settle=max(60.0, args.tasks / 50),
        workers=args.workers,
        concurrency=args.concurrency,
        pool=args.pool,
        lease=args.lease,
        task_ms=tuple(args.task_ms),
        seed=seed,
        faults=args.faults,
        poison=args.poison,
        gil=args.gil,
        gil_seconds=args.gil_seconds or args.lease + 1,
        outages=args.outages,
        outage_seconds=tuple(args.outage_seconds),
        stalls=args.stalls,
        stall_seconds=tuple(args.stall_seconds or (args.lease + 0.5, args.lease + 1.5)),
        max_deliveries=args.max_deliveries,
    )
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="conveyor-chaos-")))
        broker, backend = stack.enter_context(BROKERS[args.broker](workdir))
        servers = stack.enter_context(fault_servers(broker, backend, workdir, plan.faults))
        print(f"chaos on {args.broker}: {plan}", flush=True)
        report = run_chaos(servers, workdir, plan)
    print(report.summary())
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
