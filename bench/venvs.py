"""One virtualenv per peer under ``bench/.venvs/<peer>``, created on first use.

The peers pin different redis-py versions, so each gets its own environment and the harness
runs its driver there (``<venv>/bin/python -m bench.driver ...``). Every venv also gets
``hiredis``, the parser conveyor's ``redis`` extra installs, so no system parses replies faster
for want of it, and ``psutil``, with which the driver samples its workers' memory (the I/O
workloads). A venv is rebuilt when its requirement list changes (kept in a marker file).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
VENVS_DIR = BENCH_DIR / ".venvs"
MARKER = ".bench-requirements"

#: peer -> pip requirements (the same lower bounds as the ``bench`` extra in pyproject.toml).
REQUIREMENTS: dict[str, list[str]] = {
    "celery": ["celery[redis]>=5.3", "hiredis", "psutil"],
    "dramatiq": ["dramatiq[redis]>=1.15", "hiredis", "psutil"],
    # Dramatiq on RabbitMQ (its RabbitmqBroker, on pika); results and the counter stay on the run's Redis.
    "dramatiq-amqp": ["dramatiq[rabbitmq,redis]>=1.15", "hiredis", "psutil"],
    "rq": ["rq>=1.15", "hiredis", "psutil"],
    "huey": ["huey>=2.5", "redis>=4.5", "hiredis", "psutil"],
    "arq": ["arq>=0.25", "hiredis", "psutil"],
    # PostgreSQL's peer: its tasks count completions on the run's Redis like every other system's.
    "procrastinate": ["procrastinate>=3.0", "psycopg[binary]>=3.1", "redis>=4.5", "hiredis", "psutil"],
    # The web workload serves each system's FastAPI app with uvicorn, in the system's own venv.
    "celery-web": ["celery[redis]>=5.3", "hiredis", "psutil", "fastapi>=0.110", "uvicorn>=0.29"],
    "arq-web": ["arq>=0.25", "hiredis", "psutil", "fastapi>=0.110", "uvicorn>=0.29"],
}


def python_of(peer: str) -> Path:
    """The interpreter of a peer's venv."""
    return VENVS_DIR / peer / "bin" / "python"


def is_ready(peer: str) -> bool:
    """Whether the peer's venv exists with the current requirement list."""
    marker = VENVS_DIR / peer / MARKER
    return python_of(peer).exists() and marker.exists() and marker.read_text() == "\n".join(REQUIREMENTS[peer])


def ensure(peer: str, *, rebuild: bool = False, log: Callable[[str], None] = print) -> str | None:
    """Create (or reuse) the peer's venv; return None when ready, else the reason it is not.

    The pip output goes to ``bench/.venvs/<peer>.log``.
    """
    venv = VENVS_DIR / peer
    if is_ready(peer) and not rebuild:
        return None
    if venv.exists():
        shutil.rmtree(venv)
    VENVS_DIR.mkdir(parents=True, exist_ok=True)
    logfile = VENVS_DIR / f"{peer}.log"
    log(f"creating {venv.relative_to(BENCH_DIR.parent)} ({' '.join(REQUIREMENTS[peer])}); pip log: {logfile}")
    base = getattr(sys, "_base_executable", sys.executable)
    with logfile.open("w") as out:
        steps = [
            [base, "-m", "venv", str(venv)],
            [str(python_of(peer)), "-m", "pip", "install", "--disable-pip-version-check", *REQUIREMENTS[peer]],
        ]
        for cmd in steps:
            out.write(f"$ {' '.join(cmd)}\n")
            out.flush()
            try:
                proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=900, check=False)
            except subprocess.TimeoutExpired:
                return f"timed out: {' '.join(cmd)} (see {logfile})"
            if proc.returncode != 0:
                return f"failed (exit {proc.returncode}): {' '.join(cmd)} (see {logfile})"
    (venv / MARKER).write_text("\n".join(REQUIREMENTS[peer]))
    return None


def ensure_all(peers: list[str], *, rebuild: bool = False, log: Callable[[str], None] = print) -> dict[str, str]:
    """Create the missing venvs in parallel; return {peer: reason} for those that failed."""
    todo = [p for p in peers if rebuild or not is_ready(p)]
    if not todo:
        return {}
    with ThreadPoolExecutor(max_workers=len(todo)) as pool:
        outcomes = dict(zip(todo, pool.map(lambda p: ensure(p, rebuild=rebuild, log=log), todo), strict=True))
    return {peer: reason for peer, reason in outcomes.items() if reason is not None}


if __name__ == "__main__":
    failed = ensure_all(list(REQUIREMENTS), rebuild="--rebuild" in sys.argv)
    for peer, reason in failed.items():
        print(f"{peer}: {reason}")
    sys.exit(1 if failed else 0)
