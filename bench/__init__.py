"""conveyor's benchmark harness: the same workloads on conveyor and its peers, on one Redis.

Run ``python -m bench --help`` from the repository root; ``docs/benchmarks.md`` explains the
workloads, each system's configuration and how to read the ratios.

Layout:
    ``__main__.py`` / ``cli.py``: the command (argument parsing, orchestration, runs interleaved).
    ``redis_server.py``: the harness's own ``redis-server`` on a spare loopback port.
    ``venvs.py``: one virtualenv per peer under ``bench/.venvs/`` (created on first run).
    ``driver.py``: ``python -m bench.driver SYSTEM key=value ...`` runs one workload once, inside
    the system's own venv, and prints one JSON line of figures.
    ``workloads.py``: the five workloads, written once against the driver interface.
    ``systems/``: per system, a driver (``<name>.py``) and the worker-side tasks (``<name>_tasks.py``).
    ``report.py``: medians, ratios, the rich tables and ``bench/results/latest.json``.

Everything the driver side imports (``driver``, ``workloads``, ``systems``) uses only the standard
library, redis-py and the system under test, so it runs in any peer's venv.
"""
