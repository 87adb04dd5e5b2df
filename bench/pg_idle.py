"""What an idle worker costs its PostgreSQL database: transactions per minute while no task arrives.

``python -m bench.pg_idle [--seconds 60]`` starts, on a fresh database each, a conveyor worker
(``-c 2``, process pool) and a Procrastinate worker (``-c 2``), lets each settle for 10 s, then counts
the transactions its database records (``pg_stat_database.xact_commit + xact_rollback``, read from
another database so the count does not count itself) over the window. Every statement a worker sends
in autocommit mode is one transaction, so this is its query count. Procrastinate runs from its venv
(bench/.venvs/procrastinate).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from bench import venvs
from bench.systems._postgres import Database
from bench.systems.base import REPO_ROOT

#: Seconds a worker gets to start and settle before the window opens.
SETTLE = 10.0


def _conveyor(db: Database) -> tuple[list[str], dict[str, str]]:
    from conveyor.brokers.postgres.migrate import migrate

    migrate(db.url, "conveyor")
    env = {"CONVEYOR_BROKER_URL": db.url, "BENCH_REDIS_URL": "redis://127.0.0.1:6379/15"}
    return [sys.executable, "-m", "conveyor", "worker", "bench.systems.conveyor_tasks:app", "-c", "2"], env


def _procrastinate(db: Database) -> tuple[list[str], dict[str, str]]:
    python = str(venvs.python_of("procrastinate"))
    env = {"BENCH_PROCRASTINATE_DB": db.url, "BENCH_REDIS_URL": "redis://127.0.0.1:6379/15"}
    apply = "from bench.systems.procrastinate_tasks import app; app.open(); app.schema_manager.apply_schema()"
    subprocess.run(
        [python, "-c", apply], cwd=REPO_ROOT, env={**os.environ, **env, "PYTHONPATH": str(REPO_ROOT)}, check=True
    )
    app = "--app=bench.systems.procrastinate_tasks.app"
    return [python, "-m", "procrastinate", app, "worker", "-c", "2"], env


def measure(name: str, seconds: float) -> float:
    """Transactions per minute of ``name``'s idle worker on a database of its own."""
    db = Database(f"idle_{name}")
    try:
        command, env = (_conveyor if name == "conveyor" else _procrastinate)(db)
        full_env = {**os.environ, **env, "PYTHONPATH": str(REPO_ROOT)}
        worker = subprocess.Popen(
            command, cwd=REPO_ROOT, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            time.sleep(SETTLE)
            before = db.transactions()
            time.sleep(seconds)
            time.sleep(1.5)  # a backend reports its counts to pg_stat_database within a second of idling
            after = db.transactions()
        finally:
            worker.terminate()
            worker.wait(timeout=20)
        return (after - before) * 60 / (seconds + 1.5)
    finally:
        db.drop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pg_idle", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the idle window (default 60)")
    parser.add_argument("--systems", default="conveyor,procrastinate")
    args = parser.parse_args(argv)
    for name in args.systems.split(","):
        rate = measure(name, args.seconds)
        print(f"idle {name} worker (-c 2): {rate:.1f} transactions/min over {args.seconds:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
