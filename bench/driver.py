"""Run one workload once on one system and print one JSON line: ``python -m bench.driver SYSTEM key=value ...``.

The harness runs this inside the system's venv (``bench/.venvs/<peer>/bin/python``; conveyor's
in the harness's own interpreter), from the repository root. Keys:

    workload=throughput|results|latency|batch|mixed|io-threads|io-async   n=TASKS
    redis_url=redis://127.0.0.1:PORT/DB   concurrency=2   timeout=SECONDS   batch_size=1000
    workers=2   slots=128   label=NAME   workdir=PATH

The database in ``redis_url`` is flushed (FLUSHDB) before and after the run: give one you own.
The last line of stdout is the JSON object ``{"system", "workload", "status", "figures", "detail",
"config", "notice", "batch_note", "version", "seconds"}``. Standard library and redis-py only, plus the system.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from types import FrameType
from typing import Any

import redis

from bench.systems import REDIS_URL_ENV, SYSTEMS
from bench.systems.base import Driver, DriverConfig, Unavailable
from bench.workloads import RUNNERS, Counter, Failed, Limits, Outcome


def parse(argv: list[str]) -> tuple[str, dict[str, str]]:
    """``SYSTEM key=value ...`` -> (system, options)."""
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in SYSTEMS:
        raise SystemExit(__doc__)
    options = {}
    for item in argv[1:]:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"expected key=value, got {item!r}")
        options[key] = value
    return argv[0], options


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally that stops the workers


def run(system: str, options: dict[str, str]) -> dict[str, Any]:
    """Run the workload; every outcome, including a crash, becomes the JSON record."""
    spec = SYSTEMS[system]
    workload = options.get("workload", "throughput")
    n = int(options.get("n", "1000"))
    timeout = float(options.get("timeout", "300"))
    config = DriverConfig(
        redis_url=options["redis_url"],
        concurrency=int(options.get("concurrency", "2")),
        workdir=Path(options.get("workdir", ".")),
        label=options.get("label", f"{system}-{workload}"),
        variant=spec.variant,
        workload=workload,
        workers=int(options.get("workers", "1")),
        slots=int(options.get("slots", "1")),
        log_level=spec.log_level,
    )
    config.workdir.mkdir(parents=True, exist_ok=True)
    # The task modules read the Redis URL from here (and never fall back to a default server).
    os.environ[REDIS_URL_ENV] = config.redis_url
    record: dict[str, Any] = {"system": system, "workload": workload, "n": n, "config": "", "version": ""}
    started = time.monotonic()
    limits = Limits(deadline=started + timeout)
    redis.Redis.from_url(config.redis_url).flushdb()
    counter = Counter(config.redis_url)
    driver: Driver | None = None
    try:
        module = importlib.import_module(f"bench.systems.{spec.module}")
        driver = module.DRIVER(config)
        assert driver is not None
        record["batch_note"] = driver.batch_note
        driver.setup()
        record["version"] = driver.version()
        record["config"] = driver.describe()
        record["notice"] = driver.notice()
        outcome = RUNNERS[workload](driver, counter, n, limits, int(options.get("batch_size", "1000")))
    except Unavailable as exc:
        outcome = Outcome("unavailable", detail=str(exc))
    except Failed as exc:
        outcome = Outcome(exc.status, detail=exc.detail)
    except Exception as exc:
        tb = traceback.format_exc()
        (config.workdir / f"{config.label}-driver-error.txt").write_text(tb)
        outcome = Outcome("error", detail=f"{type(exc).__name__}: {exc}".splitlines()[0][:300])
    finally:
        if driver is not None:
            driver.stop_workers()
            with contextlib.suppress(Exception):
                driver.close()
        try:
            counter.redis.flushdb()
            counter.close()
        except redis.RedisError:
            pass
    record.update(status=outcome.status, figures=outcome.figures, detail=outcome.detail)
    record["seconds"] = round(time.monotonic() - started, 2)
    return record


def main(argv: list[str] | None = None) -> int:
    system, options = parse(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _terminate)
    record = run(system, options)
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
