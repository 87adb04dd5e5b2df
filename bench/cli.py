"""``python -m bench``: the same workloads on conveyor and its peers, on one Redis, in one run.

The harness creates one venv per peer (``bench/.venvs/<peer>``, on first run), starts its own
``redis-server`` on a spare loopback port (unless ``--redis-url``), then for each workload runs
every system ``--runs`` times, interleaved (run 1 of every system, then run 2, ... with the order
rotated each time). Each run is one subprocess, ``<venv python> -m bench.driver SYSTEM ...``, that
starts fresh workers, measures, stops them and prints one JSON line. At the end it prints one
table per workload with conveyor/peer ratios and writes ``bench/results/latest.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from rich.console import Console

from bench import report, venvs
from bench.redis_server import RedisServer, command, server_version
from bench.systems import ADELAY, IO_ASYNC, IO_THREADS, SYSTEMS, WEB
from bench.systems.base import PGID_FILE_ENV, REPO_ROOT
from bench.workloads import WORKLOADS

RESULTS_DIR = REPO_ROOT / "bench" / "results"

#: Tasks per workload: full run, and --quick.
FULL = {
    "throughput": 20_000,
    "results": 5_000,
    "latency": 1_000,
    "batch": 20_000,
    "mixed": 2_000,
    IO_THREADS: 30_000,
    IO_ASYNC: 10_000,
    "chord": 1_000,
    "group": 1_000,
    "chain": 4,
    WEB: 6_000,
    ADELAY: 20_000,
}
QUICK = {
    "throughput": 2_000,
    "results": 500,
    "latency": 200,
    "batch": 2_000,
    "mixed": 500,
    IO_THREADS: 4_000,
    IO_ASYNC: 2_000,
    "chord": 1_000,
    "group": 1_000,
    "chain": 4,
    WEB: 2_000,
    ADELAY: 5_000,
}

NOTE = (
    "Figures from a shared or busy machine are only good for checking the harness; compare "
    "systems from one run on a quiet machine."
)

EPILOG = f"""
workloads (issue 6):
  throughput  N no-op tasks (each INCRs one Redis counter) enqueued one by one with the workers
              stopped (enqueue/s); then the workers start: start-up s = spawn -> first task,
              processed/s = first -> last task.                          N={FULL["throughput"]:,}
  results     warm workers; enqueue N tasks returning a value, collect every result.  N={FULL["results"]:,}
  latency     warm idle workers; enqueue one task, wait for its result; N times: p50/p90/p99.
                                                                                       N={FULL["latency"]:,}
  batch       N no-op tasks through the system's batch API (or its nearest: a loop), in chunks
              of --batch-size; then drained to check every task ran.       N={FULL["batch"]:,}
  mixed       N tasks, 1% sleep 1 s, the rest no-ops, enqueued with the workers stopped; drain s
              = first -> last completion (floor s = sleepers x 1 s / concurrency).  N={FULL["mixed"]:,}
workloads (issue 12, I/O-bound; each system in its own pool for the shape, --concurrency unused):
  io-threads  N tasks that block 20 ms (time.sleep) then count, queued with the workers stopped;
              then --io-workers (2) worker processes x --io-threads (128) threads drain them:
              processed/s first -> last task, steady /s between 10% and 90%, peak RSS.
              conveyor --pool thread, Dramatiq -p 2 -t 128, Celery -P threads, Huey -k thread.
                                                                                  N={FULL[IO_THREADS]:,}
  io-async    N tasks that await asyncio.sleep(1) then count, queued; then one worker with
              --io-async-slots (1000) coroutines drains them: drain s = (first completion - 1 s)
              -> last completion (floor = N / slots x 1 s), peak RSS of the worker's process tree.
              conveyor --pool asyncio (--pool thread if this conveyor has none: printed),
              arq max_jobs, Dramatiq -p 1 -t 1000 with its AsyncIO middleware.    N={FULL[IO_ASYNC]:,}
workloads (issue 17; conveyor-redis, conveyor-postgres and celery, which have a canvas):
  chord       warm workers; a chord of N echo members, body = their sum: send -> body's result.
                                                                                  N={FULL["chord"]:,}
  group       warm workers; a group of N echo tasks: send -> every result in order. N={FULL["group"]:,}
  chain       warm idle workers; a chain of N steps (x+1), send -> last result, 50 times: p50 ms.
                                                                                  N={FULL["chain"]}

workloads (issue 15, the web path; systems conveyor-redis, celery-web, arq-web):
  web         one uvicorn process serves the system's FastAPI app (bench/systems/*_web.py): POST /call
              sends a task that awaits 50 ms and answers its result. 200 keep-alive clients send N
              requests (requests/s, p50/p99 ms), then 20 clients send N/5 (p50/p99). Any request not
              answered 200 with its own value fails the run. conveyor: adelay + aget, --pool asyncio
              -c 1000; Celery: delay().get() through asyncio.to_thread on 200 threads, -P threads -c 200;
              arq: enqueue_job + job.result(poll_delay=0.01), max_jobs 1000.            N={FULL[WEB]:,}
  adelay      conveyor only, no worker: N sequential task.delay() calls, then N await task.adelay()
              calls: µs per call and their ratio (target <= 1).                       N={FULL[ADELAY]:,}
--quick uses N = {", ".join(f"{k} {v:,}" for k, v in QUICK.items())} and --runs 1.
conveyor-redis-info runs throughput only: conveyor at its default INFO level (one log line per
task), to price that line against conveyor-redis (WARNING).

systems: {", ".join(SYSTEMS)}. Peers run in their own venvs under bench/.venvs (created on first
run with pip; --rebuild-venvs recreates them). conveyor runs in this interpreter, which needs
conveyor with its redis extra (pip install -e '.[redis]').

Every run starts fresh workers (concurrency 2 by default) and checks through the counter that
every task ran: DROPPED k, TIMEOUT or ERROR replace the figure otherwise (details below each table,
logs in bench/results/work/). Ratio columns: > 1 means conveyor is better (rates: conveyor ÷ peer;
times and latencies: peer ÷ conveyor). {NOTE}

examples:
  python -m bench --quick                          check the harness (~5 minutes)
  python -m bench --quick --workloads io-threads,io-async   the I/O workloads (~1-2 minutes)
  python -m bench                                  full run, 3 runs per system
  python -m bench --systems conveyor-redis,celery --workloads latency
  python -m bench --redis-url redis://127.0.0.1:6379/15   use a server you run (DB 15 is flushed!)
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark conveyor against Celery, Dramatiq, RQ, Huey and arq on the same Redis.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated systems (default: all)")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated workloads (default: all)")
    p.add_argument(
        "--runs", type=int, help="runs per system and workload; figures are medians (default 3; 1 with --quick)"
    )
    p.add_argument("--quick", action="store_true", help="smaller N for every workload, to check the harness")
    p.add_argument(
        "-c",
        "--concurrency",
        type=int,
        default=2,
        help="tasks run at once by each system, issue 6 workloads (default 2)",
    )
    p.add_argument("--io-workers", type=int, default=2, help="io-threads: worker processes (default 2)")
    p.add_argument("--io-threads", type=int, default=128, help="io-threads: threads per worker process (default 128)")
    p.add_argument(
        "--io-async-slots",
        type=int,
        default=1000,
        help="io-async: coroutines in flight in the one worker (default 1000)",
    )
    for name in WORKLOADS:
        p.add_argument(f"--{name}-n", type=int, metavar="N", help=f"tasks in the {name} workload")
    p.add_argument("--batch-size", type=int, default=1000, help="tasks per batch call (default 1000)")
    p.add_argument(
        "--redis-url",
        help="use this Redis database instead of starting a redis-server; it is FLUSHDB'ed before and "
        "after every run, so give a URL with an explicit database you own, e.g. redis://127.0.0.1:6379/15",
    )
    p.add_argument(
        "--conveyor-src",
        type=Path,
        help="run conveyor from this source directory (the one holding the conveyor package, e.g. "
        "/path/to/other/checkout/src) instead of the installed one: put first on PYTHONPATH",
    )
    p.add_argument("--timeout", type=float, help="seconds one run of one system may take (default: from N)")
    p.add_argument("--output", type=Path, default=RESULTS_DIR / "latest.json", help="JSON results file")
    p.add_argument("--rebuild-venvs", action="store_true", help="recreate the peers' venvs")
    p.add_argument("--setup-only", action="store_true", help="create the peers' venvs and exit")
    return p


def _split(value: str, known: Any, what: str, parser: argparse.ArgumentParser) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in items if v not in known]
    if unknown:
        parser.error(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return items


def default_timeout(workload: str, n: int) -> float:
    """Seconds a run gets: start-up, plus n tasks at a pessimistic 40 tasks/s, plus the sleepers."""
    extra = n / 100 if workload == "mixed" else 0.0
    return 120.0 + n / 40 + extra


def worker_shape(workload: str, args: argparse.Namespace) -> tuple[int, int]:
    """(worker processes, slots per process) of an I/O workload; (1, 1) for the others (they use -c)."""
    if workload == IO_THREADS:
        return args.io_workers, args.io_threads
    if workload == IO_ASYNC:
        return 1, args.io_async_slots
    return 1, 1


def run_driver(
    system: str, workload: str, n: int, run: int, url: str, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    """Run one driver subprocess and return its JSON record (or a record of its failure)."""
    spec = SYSTEMS[system]
    python = sys.executable if spec.venv is None else str(venvs.python_of(spec.venv))
    timeout = args.timeout or default_timeout(workload, n)
    workers, slots = worker_shape(workload, args)
    label = f"{system}-{workload}-{run}"
    pgid_file = workdir / f"{label}.pgids"
    pgid_file.unlink(missing_ok=True)
    cmd = [
        python,
        "-m",
        "bench.driver",
        system,
        f"workload={workload}",
        f"n={n}",
        f"redis_url={url}",
        f"concurrency={args.concurrency}",
        f"timeout={timeout}",
        f"batch_size={args.batch_size}",
        f"workers={workers}",
        f"slots={slots}",
        f"label={label}",
        f"workdir={workdir}",
    ]
    env = dict(os.environ)
    src = str(args.conveyor_src.resolve()) if args.conveyor_src else ""
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), src, env.get("PYTHONPATH", "")]))
    env[PGID_FILE_ENV] = str(pgid_file)
    base: dict[str, Any] = {"system": system, "workload": workload, "n": n, "figures": {}, "version": "", "config": ""}
    with (workdir / f"{label}-driver.log").open("wb") as stderr:
        proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=stderr, start_new_session=True
        )
        try:
            out, _ = proc.communicate(timeout=timeout + 60)
        except subprocess.TimeoutExpired:
            _kill_driver(proc, pgid_file)
            return {**base, "status": "timeout", "detail": f"TIMEOUT: the run did not end within {timeout + 60:.0f} s"}
        except BaseException:  # Ctrl-C or SIGTERM of the harness: stop the driver and its workers too
            _kill_driver(proc, pgid_file)
            raise
    lines = [line for line in out.decode(errors="replace").splitlines() if line.startswith("{")]
    if not lines:
        tail = (workdir / f"{label}-driver.log").read_text(errors="replace").strip().splitlines()[-1:]
        return {**base, "status": "error", "detail": f"driver exited {proc.returncode}: {' '.join(tail)}"[:300]}
    record: dict[str, Any] = json.loads(lines[-1])
    return record


def _kill_driver(proc: subprocess.Popen[bytes], pgid_file: Path) -> None:
    """SIGTERM the driver (it stops its workers), then SIGKILL it and every worker group it recorded."""
    try:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(20)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        pass
    groups = [proc.pid]
    if pgid_file.exists():
        groups += [int(x) for x in pgid_file.read_text().split()]
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    proc.wait()


def _main_figure(record: dict[str, Any]) -> str:
    if record.get("status") != "ok":
        return str(record.get("detail") or record.get("status"))
    main = report.SPECS[record["workload"]].main
    value = record["figures"].get(main)
    return f"{report.MAIN_HEADERS[main]} {value:,.2f}" if value is not None else "?"


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _load_average() -> list[float]:
    """The 1, 5 and 15-minute load averages (the machine is shared: the figures need them)."""
    return [round(x, 2) for x in os.getloadavg()]


def _prepare_workdir() -> Path:
    workdir = RESULTS_DIR / "work"
    workdir.mkdir(parents=True, exist_ok=True)
    for old in workdir.iterdir():
        if old.is_file():
            old.unlink()
    return workdir


def _check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Fill in the defaults that depend on other options; reject values that cannot run."""
    if args.runs is None:
        args.runs = 1 if args.quick else 3
    if min(args.runs, args.concurrency, args.batch_size, args.io_workers, args.io_threads, args.io_async_slots) < 1:
        parser.error("--runs, --concurrency, --batch-size and the --io-* shapes must be at least 1")
    if args.conveyor_src and not (args.conveyor_src / "conveyor" / "__init__.py").exists():
        parser.error(f"--conveyor-src {args.conveyor_src}: no conveyor package there (give the directory holding it)")
    if args.redis_url and urlsplit(args.redis_url).path.strip("/") == "":
        parser.error("--redis-url needs an explicit database (e.g. redis://127.0.0.1:6379/15): it gets flushed")


def _unavailable(system: str, workload: str, reason: str) -> dict[str, Any]:
    """The record of a run that could not start (the system's venv is not usable)."""
    return {
        "system": system,
        "workload": workload,
        "status": "unavailable",
        "figures": {},
        "detail": f"venv: {reason}",
        "version": "",
        "config": "",
    }


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through run_driver (kills the driver) and stops redis-server


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    parser = build_parser()
    args = parser.parse_args(argv)
    systems = _split(args.systems, SYSTEMS, "system", parser)
    workloads = _split(args.workloads, WORKLOADS, "workload", parser)
    _check_args(args, parser)
    sizes = {w: getattr(args, f"{w.replace('-', '_')}_n") or (QUICK if args.quick else FULL)[w] for w in workloads}
    console = Console(width=None if sys.stdout.isatty() else 160)
    started = time.monotonic()
    load_before = _load_average()

    peers = sorted({venv for s in systems if (venv := SYSTEMS[s].venv) is not None})
    broken = venvs.ensure_all(
        peers, rebuild=args.rebuild_venvs, log=lambda m: console.print(m, highlight=False, markup=False)
    )
    for peer, reason in broken.items():
        console.print(f"[red]{peer}: venv not usable: {reason}[/red]", highlight=False)
    if args.setup_only:
        return 1 if broken else 0

    workdir = _prepare_workdir()
    server = None if args.redis_url else RedisServer(workdir)
    url = args.redis_url or (server.url if server else "")
    # Each workload runs on the systems that have a pool for it (and the INFO row on throughput only).
    runs_on = {w: [s for s in systems if w in SYSTEMS[s].workloads] for w in workloads}
    records: dict[str, dict[str, list[dict[str, Any]]]] = {w: {s: [] for s in runs_on[w]} for w in workloads}
    try:
        if command(url, "PING") != b"PONG":
            raise SystemExit(f"{url} does not answer PING")
        redis_version = server_version(url)
        where = f"own redis-server {redis_version} on {url}" if server else f"{url} (Redis {redis_version})"
        total = args.runs * sum(len(names) for names in runs_on.values())
        console.print(
            f"[bold]bench[/bold]: {len(systems)} systems x {len(workloads)} workloads x {args.runs} runs "
            f"on {where}; concurrency {args.concurrency}; sizes {sizes}; load average {load_before}"
            + (f"; conveyor from {args.conveyor_src}" if args.conveyor_src else ""),
            highlight=False,
        )
        done = 0
        for workload in workloads:
            skipped = [s for s in systems if s not in runs_on[workload]]
            if skipped:
                console.print(f"{workload}: not run on {', '.join(skipped)} (no pool for it)", highlight=False)
            names = runs_on[workload]
            for run in range(args.runs if names else 0):
                order = names[run % len(names) :] + names[: run % len(names)]
                for system in order:
                    done += 1
                    venv = SYSTEMS[system].venv
                    if venv in broken:
                        record = _unavailable(system, workload, broken[venv])
                    else:
                        record = run_driver(system, workload, sizes[workload], run + 1, url, args, workdir)
                    records[workload][system].append(record)
                    console.print(
                        f"[{done}/{total}] {workload} run {run + 1} {system}: {record.get('status')} "
                        f"{_main_figure(record)} ({record.get('seconds', '?')} s)",
                        highlight=False,
                        markup=False,
                    )
    finally:
        if server is not None:
            server.stop()

    meta = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "redis": {"url": url if args.redis_url else "own redis-server", "version": redis_version},
        "conveyor_src": str(args.conveyor_src.resolve()) if args.conveyor_src else "installed",
        "runs": args.runs,
        "concurrency": args.concurrency,
        "io_shapes": {IO_THREADS: worker_shape(IO_THREADS, args), IO_ASYNC: worker_shape(IO_ASYNC, args)},
        "load_average": {"before": load_before, "after": _load_average()},
        "batch_size": args.batch_size,
        "quick": args.quick,
        "sizes": sizes,
        "seconds": round(time.monotonic() - started, 1),
        "note": NOTE,
    }
    result = report.build(meta, sizes, records)
    report.print_tables(console, result)
    report.write_json(args.output, result)
    console.print(f"\n{NOTE}\nwrote {args.output} in {meta['seconds']:.0f} s; logs in {workdir}", highlight=False)
    return 0
