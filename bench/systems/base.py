"""The interface every system's driver implements, and the worker-process plumbing they share.

A driver lives in one process (the system's venv) for one run of one workload: it enqueues
with the system's client API, starts and stops the system's own worker command, and waits for
results. Standard library only (plus what the subclass imports), so it runs in any venv.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from bench.systems import REDIS_URL_ENV

#: The repository root: worker processes run there with it on PYTHONPATH, to import ``bench.systems``.
REPO_ROOT = Path(__file__).resolve().parents[2]

#: The three task kinds every system defines: count; count and return the argument; sleep then count.
KINDS = ("noop", "echo", "sleepy")
#: The I/O kinds, defined by the systems that run the I/O workloads: block 20 ms then count (io-threads);
#: await 1 s then count (io-async).
IO_KINDS = ("io", "aio")

#: Environment variable naming a file the driver appends each worker's process group id to, so
#: the harness can kill the workers of a driver it had to kill.
PGID_FILE_ENV = "BENCH_PGID_FILE"


class Unavailable(Exception):
    """The system cannot run here (its library, or a broker module, is missing or broken)."""


@dataclasses.dataclass(frozen=True)
class DriverConfig:
    """What the harness tells a driver.

    Attributes:
        redis_url: the Redis database of this run (broker, results and the completion counter).
        concurrency: tasks run at once by the workers (processes, or the system's nearest unit).
        workdir: scratch directory for worker logs and SQLite files.
        label: a name for this run's files, e.g. ``celery-throughput-1``.
        variant: system-specific choice (conveyor: ``redis`` or ``sqlite``).
        workload: the workload being run; the I/O ones choose the worker shape below.
        workers: io-threads and io-async: worker processes (each a system's own worker command, or
            its ``--processes``).
        slots: io-threads: threads per worker process; io-async: coroutines in flight per worker.
        log_level: the level the workers log at (``WARNING``, or ``INFO`` for the log-cost row).
    """

    redis_url: str
    concurrency: int
    workdir: Path
    label: str
    variant: str = ""
    workload: str = ""
    workers: int = 1
    slots: int = 1
    log_level: str = "WARNING"


class Driver:
    """One system as seen by the workloads. Subclasses fill in the system-specific methods."""

    #: Tasks per ``enqueue_batch`` call is chosen by the harness; this says what the call does.
    batch_note: ClassVar[str] = "loop of single enqueues (no batch API)"
    #: The web workload: the system's FastAPI app (``module:attribute``) that uvicorn serves.
    web_app: ClassVar[str] = ""

    def __init__(self, config: DriverConfig) -> None:
        self.config = config
        self._workers: list[subprocess.Popen[bytes]] = []
        self._logs: list[Any] = []
        #: The port the web workload's uvicorn listens on (127.0.0.1).
        self.web_port = _free_port()

    # -- system-specific -------------------------------------------------------------------

    def setup(self) -> None:
        """Import the client side and connect; raise :class:`Unavailable` when it cannot run."""
        raise NotImplementedError

    def version(self) -> str:
        """The library version under test."""
        raise NotImplementedError

    def describe(self) -> str:
        """A one-line description of the worker configuration, shown in the tables."""
        raise NotImplementedError

    def worker_commands(self) -> list[list[str]]:
        """The commands to start the workers (one per process the harness starts itself).

        For the I/O workloads (``config.workload``) the shape is ``config.workers`` processes of
        ``config.slots`` threads (io-threads) or coroutines (io-async); raise :class:`Unavailable`
        for a shape the system has no pool for.
        """
        raise NotImplementedError

    def notice(self) -> str:
        """Something the reader must know about this run even when it succeeds (e.g. a fallback pool)."""
        return ""

    def worker_env(self) -> dict[str, str]:
        """Extra environment for the worker processes."""
        return {}

    def enqueue_one(self, kind: str, arg: int) -> Any:
        """Enqueue one task of ``kind`` with ``arg``; return a handle ``wait_result`` accepts."""
        raise NotImplementedError

    def enqueue_batch(self, kind: str, args: Sequence[int]) -> list[Any]:
        """Enqueue many tasks with the system's nearest batch API; default: a loop."""
        return [self.enqueue_one(kind, a) for a in args]

    def enqueue_workflow(self, shape: str, n: int) -> Any:
        """Send a workflow of echo/step tasks with the system's canvas API; return a handle ``wait_result`` accepts.

        ``chord``: N ``echo(i)`` members and a ``total`` body (their sum); ``group``: N ``echo(i)`` (the list);
        ``chain``: ``step(0) | step() | ...`` N steps (N). Raise :class:`Unavailable` without a canvas API.
        """
        raise Unavailable(f"{type(self).__name__} has no chains, groups or chords")

    def wait_result(self, handle: Any, timeout: float) -> Any:
        """Block until the task's result is there and return it.

        Raises:
            TimeoutError: no result within ``timeout`` seconds.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Release client connections."""

    def per_call_seconds(self, n: int) -> dict[str, float]:
        """The adelay workload: seconds per call of each producer API measured (conveyor only)."""
        raise Unavailable("no async producer API to compare")

    def web_server_command(self) -> list[str]:
        """The web workload's server: one uvicorn process serving :attr:`web_app`, quiet (no access log)."""
        if not self.web_app:
            raise Unavailable("no FastAPI app for the web workload")
        return [
            *(sys.executable, "-m", "uvicorn", self.web_app, "--host", "127.0.0.1", "--port", str(self.web_port)),
            # Keep idle keep-alive connections (uvicorn closes them after 5 s): between the phases a
            # client may idle longer, and its next request would meet a closed connection.
            *("--log-level", "warning", "--no-access-log", "--timeout-keep-alive", "300"),
        ]

    # -- shared ----------------------------------------------------------------------------

    def bin(self, name: str) -> str:
        """A console script of the interpreter running this driver (the system's venv)."""
        return str(Path(sys.executable).parent / name)

    def start_workers(self) -> None:
        """Start the worker processes, each in its own process group, logging to the workdir."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
        env[REDIS_URL_ENV] = self.config.redis_url
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.worker_env())
        pgid_file = os.environ.get(PGID_FILE_ENV)
        for i, cmd in enumerate(self.worker_commands()):
            log = (self.config.workdir / f"{self.config.label}-worker{i}.log").open("ab")
            log.write(f"$ {' '.join(cmd)}\n".encode())
            log.flush()
            self._logs.append(log)
            proc = subprocess.Popen(
                cmd, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
            self._workers.append(proc)
            if pgid_file:
                with Path(pgid_file).open("a") as f:
                    f.write(f"{proc.pid}\n")

    def worker_pids(self) -> list[int]:
        """The pids of the processes the harness started (each the root of a worker's process tree)."""
        return [p.pid for p in self._workers]

    def workers_alive(self) -> bool:
        """Whether every worker process started is still running."""
        return all(p.poll() is None for p in self._workers)

    def stop_workers(self, grace: float = 5.0) -> None:
        """SIGTERM each worker, wait up to ``grace`` seconds, then SIGKILL its whole process group."""
        for proc in self._workers:
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGTERM, group=False)
        deadline = time.monotonic() + grace
        for proc in self._workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.0, deadline - time.monotonic()))
            _signal_group(proc.pid, signal.SIGKILL, group=True)  # children left behind, or a stuck master
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        for log in self._logs:
            log.close()
        self._workers.clear()
        self._logs.clear()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _signal_group(pid: int, sig: signal.Signals, *, group: bool) -> None:
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
