"""Private redis-server processes for tests that stop, kill or freeze a server.

The shared Redis on 6379 serves every test at once, so a test that needs an outage starts a server
of its own on a free port, in its own folder, and stops it afterwards.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import redis

from tests.conftest import server_missing, wait_until

# Ports handed to test servers: below the kernel's ephemeral range (32768-60999 here), so no bind(0)
# and no outgoing connection of any process takes one while its server is down for a restart, and
# each held by a lock file for the life of the process that took it, so no other test takes it either.
# A kernel pick (bind to port 0) was free only at that instant: a test that killed its private server
# and booted it again on the same port once found another test's new server listening there, and
# talked to that one (an empty RabbitMQ node: "0 of 200 messages survived the crash").
_PORTS = range(20000, 32000)
_PORT_LOCKS = Path(tempfile.gettempdir()) / "conveyor-test-ports"
_held_ports: dict[int, int] = {}  # port -> the open lock file's descriptor, kept until this process exits


def free_port() -> int:
    """A TCP port nobody listens on, that no other test process gets while this one lives."""
    _PORT_LOCKS.mkdir(mode=0o777, exist_ok=True)
    start = random.randrange(len(_PORTS))
    for step in range(len(_PORTS)):
        port = _PORTS[(start + step) % len(_PORTS)]
        if port in _held_ports:
            continue
        fd = os.open(_PORT_LOCKS / f"{port}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another test process holds it
            os.close(fd)
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:  # something outside the tests listens there
                os.close(fd)
                continue
        _held_ports[port] = fd
        return port
    raise AssertionError(f"no free port left in {_PORTS}")


class PrivateRedis:
    """One redis-server of this test; ``durable`` keeps every acknowledged write across a restart.

    The port is chosen once: every :meth:`start` (also after :meth:`kill`) listens on it again, so
    clients holding the URL reconnect to the new process as they would to a restarted server.

    Args:
        folder: where the server keeps its files (its append-only file, when durable).
        durable: append-only with fsync on every write (else nothing is kept).
        timeout: seconds :meth:`start` waits for the first answer and :meth:`kill` for the exit.
        args: more redis-server options (``--replicaof HOST PORT``).
    """

    def __init__(self, folder: Path, *, durable: bool = False, timeout: float = 5.0, args: Sequence[str] = ()) -> None:
        if shutil.which("redis-server") is None:
            server_missing("redis-server", "the binary is not installed")
        self.folder = folder
        self.port = free_port()
        self.durable = durable
        self.timeout = timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.args = list(args)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server (again) and wait until it answers; one that never answers is killed."""
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder)]
        command += ["--save", "", "--appendonly", "yes" if self.durable else "no"]
        if self.durable:
            command += ["--appendfsync", "always"]
        command += self.args
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2, socket_timeout=0.5)
        try:
            wait_until(lambda: _pings(client), self.timeout, f"the private redis-server on port {self.port} to answer")
        except AssertionError:
            self.kill()
            raise
        finally:
            client.close()

    def restart(self, folder: Path | None = None) -> None:
        """Kill the server and start it again on the same port, in ``folder`` if given (else the same one).

        A durable server comes back with every acknowledged write; a new, empty ``folder`` stands
        for a server that lost its data.
        """
        self.kill()
        if folder is not None:
            self.folder = folder
        self.start()

    def kill(self) -> None:
        """Kill the server (SIGKILL, as a crash would; it also ends a frozen one) and wait for it to be gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=self.timeout)

    def freeze(self) -> None:
        """SIGSTOP the server: connections stay open, nothing is answered."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT a frozen server (nothing happens to one that is running, gone or never started)."""
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@contextlib.contextmanager
def private_redis(folder: Path, *, durable: bool = False, timeout: float = 5.0) -> Iterator[PrivateRedis]:
    """A started :class:`PrivateRedis`, killed (and thawed first, if frozen) when the block ends."""
    server = PrivateRedis(folder, durable=durable, timeout=timeout)
    server.start()
    try:
        yield server
    finally:
        server.thaw()
        server.kill()


__all__ = ["PrivateRedis", "free_port", "private_redis"]
