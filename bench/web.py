"""The web workloads of issue 15: HTTP clients against a system's FastAPI app, and adelay's per-call price.

``web``: the driver starts the system's worker and one uvicorn process serving its FastAPI app
(``bench/systems/<system>_web.py``), whose ``POST /call?x=N`` sends a task that awaits 50 ms and
answers the task's result. Then :data:`WEB_CLIENTS` (200) clients, each on one keep-alive
connection, send ``n`` requests in all, one after the other per client: requests/s over the phase,
p50/p99 of each request's time; then :data:`WEB_FEW_CLIENTS` (20) clients send ``n / 5`` more
(p50 at low load). A request fails unless it answers 200 with its own ``x``; any failure fails the run.

``adelay``: conveyor only, no worker: the time per call of ``task.delay(i)`` and of ``await
task.adelay(i)``, ``n`` sequential calls each on one connection.

The HTTP client is a small asyncio HTTP/1.1 client (standard library only: it runs in every venv,
and costs less CPU than a full client library on a shared machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import statistics
import time

from bench.systems import WEB_CLIENTS, WEB_FEW_CLIENTS, WEB_RESULT_TIMEOUT
from bench.systems.base import Driver

#: Requests every client sends before the phases (connections open, workers and imports warm).
WARM_UP = 3


class _Failed(Exception):
    pass


@dataclasses.dataclass
class Phase:
    """What one phase measured: each successful request's seconds, the failures, the wall time."""

    latencies: list[float] = dataclasses.field(default_factory=list)
    failures: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def figures(self, prefix: str) -> dict[str, float]:
        cuts = (
            statistics.quantiles(self.latencies, n=100, method="inclusive") if len(self.latencies) > 1 else [0.0] * 99
        )
        return {
            f"{prefix}req_s": len(self.latencies) / max(self.seconds, 1e-9),
            f"{prefix}p50_ms": cuts[49] * 1000,
            f"{prefix}p99_ms": cuts[98] * 1000,
        }


class _Connection:
    """One keep-alive HTTP/1.1 connection that sends ``POST /call?x=N`` and reads the JSON answer."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def call(self, x: int) -> None:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        self.writer.write(f"POST /call?x={x} HTTP/1.1\r\nHost: bench\r\nContent-Length: 0\r\n\r\n".encode())
        status = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await self.reader.readexactly(length)
        if not status.startswith(b"HTTP/1.1 200") or body != f'{{"result":{x}}}'.encode():
            raise _Failed(f"{status.decode().strip()!r} {body[:200]!r}")

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
            self.writer = None


async def _client(conn: _Connection, xs: range, phase: Phase) -> None:
    for x in xs:
        start = time.perf_counter()
        try:
            await asyncio.wait_for(conn.call(x), WEB_RESULT_TIMEOUT + 10)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, _Failed) as exc:
            phase.failures.append(f"x={x}: {type(exc).__name__}: {exc}")
            await conn.close()  # a half-read answer must not be read as the next one's
            continue
        phase.latencies.append(time.perf_counter() - start)


async def _phase(conns: list[_Connection], total: int, first: int) -> Phase:
    """Every connection sends its share of ``total`` requests, one after another; x counts from ``first``."""
    phase = Phase()
    share = max(1, total // len(conns))
    start = time.perf_counter()
    await asyncio.gather(
        *(_client(c, range(first + i * share, first + (i + 1) * share), phase) for i, c in enumerate(conns))
    )
    phase.seconds = time.perf_counter() - start
    return phase


async def _wait_until_serving(port: int, deadline: float, driver: Driver) -> None:
    """Until one request succeeds (uvicorn listening, the worker consuming), within ``deadline``."""
    last = ""
    while time.monotonic() < deadline:
        if not driver.workers_alive():
            raise _Failed(f"a worker or the web server exited (logs in {driver.config.workdir}): {last}")
        conn = _Connection(port)
        try:
            await asyncio.wait_for(conn.call(0), 10)
            return
        except (OSError, TimeoutError, asyncio.IncompleteReadError, _Failed) as exc:
            last = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(0.2)
        finally:
            await conn.close()
    raise _Failed(f"the web app did not answer before the deadline: {last}")


async def run_web(driver: Driver, n: int, deadline: float) -> tuple[dict[str, float], list[str], int]:
    """Both phases against the running web app; (figures, failures, requests sent)."""
    await _wait_until_serving(driver.web_port, deadline, driver)
    conns = [_Connection(driver.web_port) for _ in range(WEB_CLIENTS)]
    try:
        warm = await _phase(conns, WEB_CLIENTS * WARM_UP, 1)
        many = await _phase(conns, n, 1_000_000)
        few = await _phase(conns[:WEB_FEW_CLIENTS], max(WEB_FEW_CLIENTS, n // 5), 2_000_000)
    finally:
        await asyncio.gather(*(c.close() for c in conns))
    figures = {**many.figures(""), **few.figures("few_")}
    figures["failures"] = float(len(many.failures) + len(few.failures) + len(warm.failures))
    sent = 1 + len(warm.latencies) + len(warm.failures) + len(many.latencies) + len(many.failures)
    sent += len(few.latencies) + len(few.failures)
    return figures, warm.failures + many.failures + few.failures, sent
