"""The chaos run's fault kinds beside ``kill -9``: private servers, injectors, namespaced workers, counts.

- ``backend``: the result backend is a private ``redis-server`` (append-only, fsync always, so a
  restart keeps what it had acknowledged) that an :class:`Injector` kills and restarts.
- ``stall``: the broker stops answering for longer than the lease: SIGSTOP/SIGCONT of a private
  broker ``redis-server``, or of every process of a private PostgreSQL cluster (which then replaces
  the broker), or, on SQLite, a ``BEGIN IMMEDIATE`` held by the driver. The system RabbitMQ is shared
  with other people's tests: never stalled (the fault is skipped on amqp).
- ``poison``, ``gil``: tasks of ``tests/apps/chaos_app.py`` mixed into the load (no driver action).
- ``collide``: workers started under ``unshare --pid --fork``: every supervisor is pid 1, its
  children 2, 3, ..., and all share this host's name, so their lease owner ids collide.

Only servers a run starts itself are ever killed or stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

from tests.e2e.conftest import ROOT, WorkerProcess
from tests.pg_server import PrivatePostgres
from tests.servers import PrivateRedis

#: Every fault kind ``--faults`` accepts, in the order the summary prints them.
FAULTS = ("kill", "backend", "stall", "poison", "gil", "collide")

#: The app every chaos worker runs: the e2e app plus the chaos tasks.
APP_SPEC = "tests.apps.chaos_app:app"


def parse_faults(text: str) -> frozenset[str]:
    """``"kill,gil"`` → ``{"kill", "gil"}``; ``"all"`` → every kind; an unknown kind is an error."""
    kinds = {k.strip() for k in text.split(",") if k.strip()}
    if kinds == {"all"}:
        return frozenset(FAULTS)
    unknown = sorted(kinds - set(FAULTS))
    if unknown:
        raise ValueError(f"unknown fault kind(s) {', '.join(unknown)}; known: {', '.join(FAULTS)}, all")
    return frozenset(kinds)


@dataclasses.dataclass(slots=True)
class FaultCounts:
    """What was injected, per fault kind (printed by the summary)."""

    child_kills: int = 0
    worker_kills: int = 0
    outages: int = 0
    outage_seconds: float = 0.0
    stall_kind: str = ""
    stalls: int = 0
    stall_seconds: float = 0.0
    poison_tasks: int = 0
    poison_crashes: int = 0
    poison_dead: int = 0
    gil_tasks: int = 0
    gil_executions: int = 0
    namespaced_workers: int = 0
    namespaced_ids: set[str] = dataclasses.field(default_factory=set)
    collide_kills: int = 0

    def lines(self, faults: frozenset[str]) -> list[str]:
        """One line per selected fault kind."""
        text = {
            "kill": f"{self.child_kills} children and {self.worker_kills} whole workers killed (kill -9)",
            "backend": f"{self.outages} outages of the result backend, {self.outage_seconds:.1f} s down in all",
            "stall": f"{self.stalls} stalls ({self.stall_kind}), {self.stall_seconds:.1f} s in all",
            "poison": f"{self.poison_tasks} poison tasks, {self.poison_crashes} crashes, "
            f"{self.poison_dead} dead-lettered",
            "gil": f"{self.gil_tasks} GIL-holding tasks, {self.gil_executions} executions",
            "collide": f"{self.namespaced_workers} workers started in pid namespaces under "
            f"{len(self.namespaced_ids)} worker id(s) ({', '.join(sorted(self.namespaced_ids)[:3])}), "
            f"{self.collide_kills} children killed in them",
        }
        return [f"fault {kind + ':':9} {text[kind]}" for kind in FAULTS if kind in faults]


class Injector(threading.Thread):
    """Injects one fault ``rounds`` times: wait a random gap, break something, wait, repair.

    Repair always runs, also when the run stops early or the break raised, so no server stays
    down or stopped. ``note`` writes ``<name> <n> begin`` and ``<name> <n> end`` into the run's log.
    An exception is kept in ``error`` for the report, never lost in the thread.
    """

    def __init__(
        self,
        name: str,
        rounds: int,
        gap: tuple[float, float],
        duration: tuple[float, float],
        actions: tuple[Callable[[], None], Callable[[], None]],
        seed: int,
        note: Callable[[str], None],
    ) -> None:
        super().__init__(name=f"chaos-{name}", daemon=True)
        self.label = name
        self.rounds, self.gap, self.duration = rounds, gap, duration
        self.fault, self.repair = actions
        self.rng = random.Random(seed)
        self.note = note
        self.done = 0
        self.seconds = 0.0
        self.error: str | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            for _ in range(self.rounds):
                if self._halt.wait(self.rng.uniform(*self.gap)):
                    return
                self._one_round()
        except Exception as exc:  # reported as a problem of the run
            self.error = f"{self.name} failed: {exc!r}"

    def _one_round(self) -> None:
        began = time.monotonic()
        label = f"{self.label} {self.done + 1}"
        try:
            self.fault()
            self.note(f"{label} begin")
            self._halt.wait(self.rng.uniform(*self.duration))
        finally:
            self.repair()
            self.note(f"{label} end")
            self.seconds += time.monotonic() - began
            self.done += 1

    def finished(self) -> bool:
        return not self.is_alive()

    def halt(self) -> None:
        """Stop after the current round (repairing what it broke) and wait for the thread."""
        self._halt.set()
        self.join(timeout=30)


class SqliteLockHolder:
    """Holds the SQLite database's write lock (``BEGIN IMMEDIATE``) from the driver: a stalled SQLite "server"."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    def take(self) -> None:
        self._conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self._conn.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
            self._conn.close()
            self._conn = None


class ChaosWorker(WorkerProcess):
    """A ``conveyor worker`` of the chaos app, optionally in its own pid namespace (``unshare --pid``).

    In a namespace the subprocess is ``unshare`` and the supervisor its one child (pid 1 inside);
    ``--kill-child`` takes the supervisor down if ``unshare`` dies, and pid 1's death takes down
    every process of the namespace.
    """

    def __init__(self, env: dict[str, str], args: list[str], log: Path, *, namespaced: bool) -> None:
        self.log = log
        self.namespaced = namespaced
        prefix = ["unshare", "--pid", "--fork", "--kill-child"] if namespaced else []
        command = [*prefix, sys.executable, "-m", "conveyor", "worker", APP_SPEC, *args]
        with log.open("w") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        self._supervisor: psutil.Process | None = None

    def worker_id(self) -> str:
        """The id the supervisor announced in its ``worker <id> ready`` line ('' before that)."""
        found = re.search(r"worker (\S+) ready", self.output())
        return found.group(1) if found else ""

    def supervisor(self) -> psutil.Process:
        """The supervisor process, as the host sees it."""
        if self._supervisor is None:
            process = psutil.Process(self.proc.pid)
            self._supervisor = process.children()[0] if self.namespaced else process
        return self._supervisor

    def terminate(self) -> None:
        """SIGTERM to the supervisor (a graceful stop), wherever it lives."""
        if self.proc.poll() is None:
            with contextlib.suppress(psutil.NoSuchProcess, IndexError):
                self.supervisor().terminate()


@dataclasses.dataclass(slots=True)
class Servers:
    """Where the run's messages and results live, and the private servers its faults may stop."""

    broker: str
    backend: str | None = None
    backend_redis: PrivateRedis | None = None
    broker_redis: PrivateRedis | None = None
    broker_postgres: PrivatePostgres | None = None
    sqlite: Path | None = None
    stall_kind: str = ""


@contextlib.contextmanager
def fault_servers(broker: str, backend: str | None, workdir: Path, faults: frozenset[str]) -> Iterator[Servers]:
    """The broker and backend of a run, with private servers in place where a fault will stop one.

    ``backend`` replaces the result backend with a private, durable redis-server; ``stall`` on a
    Redis broker replaces the broker with a private redis-server. Every server started is killed
    on the way out.
    """
    servers = Servers(broker, backend)
    started: list[PrivateRedis | PrivatePostgres] = []
    try:
        if "backend" in faults:
            servers.backend_redis = _private_redis(workdir / "backend-redis", durable=True)
            started.append(servers.backend_redis)
            servers.backend_redis.start()
            servers.backend = servers.backend_redis.url
        if "stall" in faults:
            _stallable(servers, workdir, started)
        yield servers
    finally:
        for server in started:
            server.thaw()
            server.kill()


def _private_redis(folder: Path, *, durable: bool) -> PrivateRedis:
    """A private server of the run in its own folder, given 10 s to answer or exit on a machine the run keeps busy."""
    folder.mkdir(parents=True, exist_ok=True)
    return PrivateRedis(folder, durable=durable, timeout=10)


def _stallable(servers: Servers, workdir: Path, started: list[PrivateRedis | PrivatePostgres]) -> None:
    scheme = servers.broker.partition("://")[0]
    if scheme == "sqlite":
        servers.sqlite = Path(servers.broker.partition("sqlite:///")[2].partition("?")[0])
        servers.stall_kind = "BEGIN IMMEDIATE held on the SQLite file"
    elif scheme == "redis":
        servers.broker_redis = _private_redis(workdir / "broker-redis", durable=False)
        started.append(servers.broker_redis)
        servers.broker_redis.start()
        servers.broker = servers.broker_redis.url
        servers.stall_kind = "SIGSTOP of the broker's private redis-server"
    elif scheme in {"postgresql", "postgres"}:
        from conveyor.brokers.postgres.migrate import migrate

        servers.broker_postgres = PrivatePostgres()
        started.append(servers.broker_postgres)
        servers.broker_postgres.start()
        migrate(servers.broker_postgres.url, "conveyor")
        servers.broker = servers.broker_postgres.url
        if servers.backend is None or servers.backend.startswith("postgres"):
            servers.backend = None  # results in the same private cluster, stalled with it
        servers.stall_kind = "SIGSTOP of every process of the broker's private PostgreSQL cluster"
    else:
        servers.stall_kind = f"skipped: the {scheme} server is shared, only private servers are stalled"
