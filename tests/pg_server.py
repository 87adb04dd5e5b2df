"""Private PostgreSQL clusters for tests that stop, restart or freeze the server.

The system PostgreSQL on 5432 serves every test at once and must never be stopped, so a test that
needs an outage creates a cluster of its own (``initdb`` in a temporary folder, ``pg_ctl`` on a free
port) and removes it afterwards. PostgreSQL refuses to run as root: as root the binaries run as the
``postgres`` user, which then owns the folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import psutil
import psycopg

from tests.conftest import server_missing, wait_until
from tests.servers import free_port

#: Where Debian installs the server binaries (initdb and pg_ctl are not on PATH there).
BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def _binary(name: str) -> str:
    found = shutil.which(name) or next((str(d / name) for d in BIN_DIRS if (d / name).exists()), None)
    if found is None:
        server_missing(f"PostgreSQL's {name}", "not installed (apt-get install postgresql)")
    assert found is not None
    return found


class PrivatePostgres:
    """One PostgreSQL cluster of this test on its own port; every committed transaction survives :meth:`crash`.

    Args:
        timeout: seconds :meth:`start` waits for the server to answer.
        settings: server settings added to its postgresql.conf (``{"log_statement": "all"}``).
        listen: the address it listens on (a test host's, for the partition test).
        within: a command prefix that :meth:`start` runs ``pg_ctl`` under (``ip netns exec NS``: the
            server then lives in that network namespace).
    """

    def __init__(
        self,
        timeout: float = 30.0,
        settings: Mapping[str, str] | None = None,
        listen: str = "127.0.0.1",
        within: Sequence[str] = (),
    ) -> None:
        self.initdb, self.pg_ctl = _binary("initdb"), _binary("pg_ctl")
        self.folder = Path(tempfile.mkdtemp(prefix="conveyor-pg-"))
        self.data = self.folder / "data"
        self.port = free_port()
        self.timeout = timeout
        self.listen = listen
        self._within = list(within)
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(self.folder, "postgres", "postgres")
        self._run(self.initdb, "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")
        if listen != "127.0.0.1":  # initdb trusts local connections only: trust the test network too
            with (self.data / "pg_hba.conf").open("a") as hba:
                hba.write(f"host all all {listen}/24 trust\n")
        if settings:
            with (self.data / "postgresql.conf").open("a") as conf:
                conf.writelines(f"{name} = '{value}'\n" for name, value in settings.items())

    @property
    def log(self) -> Path:
        """The server's log file (what ``log_statement`` and friends write)."""
        return self.folder / "server.log"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{self.listen}:{self.port}/postgres"

    def _run(self, *command: str, within: Sequence[str] = ()) -> None:
        subprocess.run([*within, *self._as, *command], check=True, capture_output=True, timeout=self.timeout)

    def start(self) -> None:
        """Start the server (again, after :meth:`crash`) and wait until it answers."""
        options = f"-p {self.port} -k {self.folder} -c listen_addresses={self.listen} -c fsync=on"
        log = str(self.log)
        timeout = str(int(self.timeout))
        self._run(
            self.pg_ctl,
            "-D",
            str(self.data),
            "-l",
            log,
            "-o",
            options,
            "-w",
            "-t",
            timeout,
            "start",
            within=self._within,
        )
        wait_until(self._answers, self.timeout, f"the private PostgreSQL on port {self.port} to answer")

    def _answers(self) -> bool:
        try:
            psycopg.connect(self.url, connect_timeout=1).close()
            return True
        except psycopg.Error:
            return False

    def crash(self) -> None:
        """Stop the server as a crash would (``pg_ctl stop -m immediate``: no checkpoint, WAL replay at start)."""
        self.thaw()
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run(self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def _processes(self) -> list[psutil.Process]:
        pidfile = self.data / "postmaster.pid"
        try:
            postmaster = psutil.Process(int(pidfile.read_text().split()[0]))
            if str(self.data) not in " ".join(postmaster.cmdline()):
                return []  # a stale pid file naming another process now (pid_max may be 32768): never signal it
            return [postmaster, *postmaster.children(recursive=True)]
        except (OSError, ValueError, psutil.Error):
            return []

    def freeze(self) -> None:
        """SIGSTOP every process of the cluster: connections stay open, nothing is answered."""
        for process in self._processes():
            with contextlib.suppress(psutil.Error):
                process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT a frozen cluster (nothing happens to one that runs or is gone)."""
        for process in self._processes():
            with contextlib.suppress(psutil.Error):
                process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """Stop the server and delete its folder."""
        self.crash()
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def private_postgres(settings: Mapping[str, str] | None = None) -> Iterator[PrivatePostgres]:
    """A started :class:`PrivatePostgres` (``settings`` added to its configuration), stopped and deleted at the end."""
    server = PrivatePostgres(settings=settings)
    try:
        server.start()
        yield server
    finally:
        server.kill()
