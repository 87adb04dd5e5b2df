"""The harness's own ``redis-server``: a spare loopback port, no persistence, stopped at the end.

A tiny RESP client (standard library) is enough for what the harness itself asks: PING and INFO.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit


def spare_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def command(url: str, *args: str, timeout: float = 2.0) -> bytes:
    """Send one command to the server of ``url`` and return the raw reply (simple and bulk replies only)."""
    parts = urlsplit(url)
    payload = f"*{len(args)}\r\n".encode() + b"".join(f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args)
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=timeout) as sock:
        if parts.password:
            auth = ["AUTH", parts.password] if not parts.username else ["AUTH", parts.username, parts.password]
            sock.sendall(f"*{len(auth)}\r\n".encode() + b"".join(f"${len(a)}\r\n{a}\r\n".encode() for a in auth))
            _read_reply(sock)
        sock.sendall(payload)
        return _read_reply(sock)


def _read_reply(sock: socket.socket) -> bytes:
    buf = b""
    while b"\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("redis closed the connection")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n")
    if head.startswith(b"-"):
        raise ConnectionError(head[1:].decode(errors="replace"))
    if not head.startswith(b"$"):
        return head[1:]
    size = int(head[1:])
    while len(rest) < size + 2:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("redis closed the connection")
        rest += chunk
    return rest[:size]


def server_version(url: str) -> str:
    """``redis_version`` from INFO server, or ``?``."""
    for line in command(url, "INFO", "server").decode(errors="replace").splitlines():
        if line.startswith("redis_version:"):
            return line.split(":", 1)[1].strip()
    return "?"


class RedisServer:
    """A ``redis-server`` child process on a spare port, with ``--save "" --appendonly no``."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH (install it, or pass --redis-url)")
        self.port = spare_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = (workdir / "redis-server.log").open("wb")
        cmd = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        cmd += ["--daemonize", "no", "--dir", str(workdir)]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                if command(self.url, "PING") == b"PONG":
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port} (see {workdir}/redis-server.log)")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
