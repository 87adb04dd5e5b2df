"""A private RabbitMQ node for a test that stops the broker: the shared node on 5672 is never stopped.

``rabbitmq-server`` with a node name, ports and folders of its own (a temporary folder, since as
root the Debian wrapper runs the node as the ``rabbitmq`` user, which must reach it). The node
shares the host's Erlang cookie, so ``rabbitmqctl -n NODE`` drives it. Booting one costs a few
seconds of CPU, which a test in the parallel pass pays instead of the whole suite waiting for a
restart of the shared node in the exclusive pass.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pika

from tests.conftest import server_missing, wait_until
from tests.servers import free_port
from tests.vhosts import CALL_TIMEOUT


class PrivateRabbitMQ:
    """One RabbitMQ node of this test; :meth:`stop_app`/:meth:`start_app` stop and start its broker.

    Args:
        timeout: seconds :meth:`start` and :meth:`start_app` wait for the node to accept AMQP connections.
    """

    def __init__(self, timeout: float = 90.0) -> None:
        if shutil.which("rabbitmq-server") is None or shutil.which("rabbitmqctl") is None:
            server_missing("rabbitmq-server", "not installed")
        self.folder = Path(tempfile.mkdtemp(prefix="conveyor-rmq-"))
        self.folder.chmod(0o777)  # the wrapper runs the node as the rabbitmq user
        self.node = f"cvtest-{uuid.uuid4().hex[:10]}@localhost"
        self.port = free_port()
        self.timeout = timeout
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def start(self) -> None:
        """Boot the node and wait until it accepts AMQP connections."""
        (self.folder / "rabbitmq.conf").write_text("")
        (self.folder / "enabled_plugins").write_text("[].\n")
        for name in ("rabbitmq.conf", "enabled_plugins"):
            (self.folder / name).chmod(0o666)
        env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": str(self.folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.folder / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.folder / "rabbitmq"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.folder / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.folder / "pid"),
            "RABBITMQ_CONF_ENV_FILE": "/dev/null",  # not the host's NODENAME
        }
        with (self.folder / "server.out").open("wb") as out:
            self.process = subprocess.Popen(
                ["rabbitmq-server"],
                cwd=self.folder,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_up()

    def answers(self) -> bool:
        """Whether the node accepts an AMQP connection now."""
        try:
            pika.BlockingConnection(pika.URLParameters(self.url + "?connection_attempts=1&socket_timeout=2")).close()
        except pika.exceptions.AMQPError:
            return False
        return True

    def stop_app(self) -> None:
        """Stop the RabbitMQ application (every connection drops; durable queues stay on disk)."""
        self._ctl("stop_app")

    def start_app(self) -> None:
        """Start the application again and wait until it accepts connections."""
        self._ctl("start_app")
        self._wait_up()

    def kill(self) -> None:
        """SIGKILL the node's Erlang VM (a crash: no shutdown, nothing flushed by RabbitMQ), and wait for it to go.

        :meth:`start` boots it again on the same folder, name and port.
        """
        assert self.process is not None
        vm = self._vm_pid()
        os.kill(vm, signal.SIGKILL)
        self.process.wait(timeout=60)  # the wrapper exits with the VM
        wait_until(lambda: not Path(f"/proc/{vm}").exists(), 30, f"the node's VM (pid {vm}) to exit")

    def ctl(self, *args: str) -> None:
        """Run ``rabbitmqctl -n NODE ARGS`` (``set_policy``, ...)."""
        self._ctl(*args)

    def _vm_pid(self) -> int:
        """The pid of the node's Erlang VM (``beam.smp``), found by its environment (the wrapper runs it via su)."""
        marker = f"RABBITMQ_NODENAME={self.node}".encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if b"beam" in (entry / "cmdline").read_bytes().split(b"\0")[0] and marker in (
                    entry / "environ"
                ).read_bytes().split(b"\0"):
                    return int(entry.name)
            except OSError:  # gone, or not ours to read
                continue
        raise AssertionError(f"no Erlang VM found for node {self.node}")

    def close(self) -> None:
        """Stop the node (hard if it does not stop in time) and remove its folder."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(subprocess.SubprocessError):
                self._ctl("stop")
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)  # its own session: the wrapper, su and the VM
                self.process.wait(timeout=10)
        shutil.rmtree(self.folder, ignore_errors=True)

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            ["rabbitmqctl", "-q", "-n", self.node, *args], check=True, capture_output=True, timeout=CALL_TIMEOUT
        )

    def _wait_up(self) -> None:
        def up() -> bool:
            if self.process is not None and self.process.poll() is not None:
                output = (self.folder / "server.out").read_text(errors="replace")[-2000:]
                raise AssertionError(f"rabbitmq-server exited with {self.process.returncode}:\n{output}")
            return self.answers()

        wait_until(up, self.timeout, f"the private RabbitMQ node {self.node} to accept connections")


@contextlib.contextmanager
def private_rabbitmq(timeout: float = 90.0) -> Iterator[PrivateRabbitMQ]:
    """A started :class:`PrivateRabbitMQ`, stopped and removed when the block ends."""
    server = PrivateRabbitMQ(timeout)
    try:
        server.start()
        yield server
    finally:
        server.close()


__all__ = ["PrivateRabbitMQ", "private_rabbitmq"]
