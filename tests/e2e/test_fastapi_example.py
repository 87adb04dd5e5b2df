"""examples/fastapi run as its README says: uvicorn serving the app, a real ``--pool asyncio`` worker, HTTP calls.

Once on SQLite (the embedded default: waiting requests are woken by the worker's datagrams) and once
on Redis (wake-up tokens).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import url_for, wait_until
from tests.e2e.conftest import ROOT
from tests.servers import free_port

#: Seconds every HTTP call may take at most.
HTTP_TIMEOUT = 15.0
#: Seconds uvicorn may take to serve (importing FastAPI takes seconds on a loaded machine).
STARTUP = 60.0


def _serving(base: str) -> bool:
    try:
        return httpx.get(f"{base}/tasks/none", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(params=["sqlite", "redis"])
def example(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The example's web app and worker on one broker; yields the web app's base URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.update(CONVEYOR_BROKER_URL=url_for(request.param, tmp_path, request), PYTHONPATH=str(ROOT))
    port = free_port()
    logs = {name: (tmp_path / f"{name}.log").open("w") for name in ("worker", "web")}
    worker_cmd = [sys.executable, "-m", "conveyor", "worker", "examples.fastapi.tasks:app", "--pool", "asyncio"]
    web_cmd = [sys.executable, "-m", "uvicorn", "examples.fastapi.main:api", "--port", str(port)]
    procs = [
        subprocess.Popen(
            [*worker_cmd, "-c", "100"], cwd=ROOT, env=env, stdout=logs["worker"], stderr=subprocess.STDOUT
        ),
        subprocess.Popen(web_cmd, cwd=ROOT, env=env, stdout=logs["web"], stderr=subprocess.STDOUT),
    ]
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _serving(base), STARTUP, f"uvicorn to serve:\n{(tmp_path / 'web.log').read_text()}")
        yield base
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for log in logs.values():
            log.close()


def _events(client: httpx.Client, path: str) -> list[tuple[str, dict[str, object]]]:
    """Read a Server-Sent Events stream to its end: (event, data) pairs."""
    out: list[tuple[str, dict[str, object]]] = []
    kind = ""
    with client.stream("GET", path) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                out.append((kind, json.loads(line.removeprefix("data: "))))
    return out


async def _many_squares(base: str, n: int) -> list[int]:
    async with httpx.AsyncClient(base_url=base, timeout=HTTP_TIMEOUT) as client:
        responses = await asyncio.gather(*(client.post("/square", params={"x": i}) for i in range(n)))
    assert [r.json()["result"] for r in responses] == [float(i * i) for i in range(n)]
    return [r.status_code for r in responses]


@pytest.mark.timeout(180)
def test_the_fastapi_example_over_http(example: str) -> None:
    with httpx.Client(base_url=example, timeout=HTTP_TIMEOUT) as client:
        # Request-response: the 50 ms task's result comes back in the same request
        started = time.monotonic()
        answer = client.post("/square", params={"x": 3})
        assert answer.status_code == 200, answer.text
        assert answer.json()["result"] == 9.0
        assert time.monotonic() - started < 5
        # A task slower than the request's timeout: 504, naming the task
        slow = client.post("/square", params={"x": 2, "timeout": 0.2, "seconds": 3})
        assert slow.status_code == 504
        assert "within 0.2 s" in slow.json()["detail"]["error"]
        # Submit: 202 and an id at once; the events stream shows each step, then the result
        submitted = client.post("/reports", params={"steps": 4, "seconds": 0.4})
        assert submitted.status_code == 202
        task_id = submitted.json()["id"]
        events = _events(client, f"/tasks/{task_id}/events")
        # (The stream shows the latest state at each read: on a loaded machine a step may be skipped,
        # and the last step's note is replaced by SUCCESS at once.)
        notes = [str(data["note"]) for kind, data in events if kind == "progress" and data["note"]]
        expected = [f"step {i} of 4" for i in range(1, 5)]
        assert notes and notes == sorted(set(notes)) and set(notes) <= set(expected), events
        assert [kind for kind, _ in events].count("done") == 1
        assert events[-1][0] == "done"
        assert events[-1][1]["result"] == "report of 4 steps ready"
        # Status: the final state, progress and result
        status = client.get(f"/tasks/{task_id}").json()
        assert (status["state"], status["progress"], status["result"]) == ("SUCCESS", 1.0, "report of 4 steps ready")
        assert client.get("/tasks/unknown-id").json()["state"] == "PENDING"
    # Many requests at once: one uvicorn process serves them all while their tasks run
    assert asyncio.run(_many_squares(example, 100)) == [200] * 100
