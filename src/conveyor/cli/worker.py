"""``conveyor worker``: run a worker for an app."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator

import click

from conveyor.cli._load import load_app
from conveyor.cli._options import loglevel
from conveyor.errors import ConfigurationError
from conveyor.logging import configure as configure_logging
from conveyor.worker import POOLS, Worker


@click.command()
@click.argument("app", envvar="CONVEYOR_APP")
@click.option("-c", "--concurrency", type=click.IntRange(min=1), help="Tasks run at once. [default: CPU count]")
@click.option("-Q", "--queues", default=None, help="Comma-separated queues to serve, highest priority first.")
@click.option(
    "--pool",
    type=click.Choice(POOLS),
    default="process",
    show_default=True,
    help="process: a child process per slot (isolated, crash-safe); thread: threads in one child; "
    "asyncio: one child's event loop running up to -c async tasks at once.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(min=0, max=65535),
    default=None,
    help="Serve Prometheus metrics at http://0.0.0.0:PORT/metrics (task counts and runtimes, queue depths).",
)
@loglevel
@click.option(
    "--beat",
    "with_beat",
    is_flag=True,
    help="Also run a beat (periodic entries) as a subprocess that stops with the worker.",
)
def worker(
    app: str,
    concurrency: int | None,
    queues: str | None,
    pool: str,
    metrics_port: int | None,
    loglevel: str | None,
    with_beat: bool,
) -> None:
    """Run a worker serving APP (MODULE:ATTR, e.g. shop.tasks:app).

    SIGTERM or Ctrl-C stops gracefully: unstarted tasks go back to the queue at once and running
    ones finish within the app's shutdown_grace; a second signal (or SIGQUIT) stops at once, and
    the tasks it interrupts run again. With --beat, the worker also runs `conveyor beat APP` as a
    subprocess, stopped with it; it competes for the leader lease with every other beat, so any
    number of workers may pass --beat.
    """
    the_app = load_app(app)
    configure_logging(the_app, loglevel)
    names = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    try:
        _ = (the_app.broker, the_app.backend)  # a URL they refuse is one line here, not a traceback per child
        the_app.load_tasks()  # include=/autodiscover=: a module that does not import is one line too
        runner = Worker(the_app, concurrency=concurrency, queues=names, pool=pool, metrics_port=metrics_port)
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from exc
    if not with_beat:
        sys.exit(runner.run())
    if not the_app.schedule:
        raise click.UsageError(
            f"--beat: app {the_app.name!r} has no periodic entries (declare them with @app.periodic)"
        )
    with _beat_subprocess(app, loglevel or the_app.settings.log_level, the_app.settings.beat_lease):
        code = runner.run()
    sys.exit(code)


@contextlib.contextmanager
def _beat_subprocess(spec: str, loglevel: str, lease: float) -> Iterator[None]:
    """Run ``conveyor beat SPEC`` beside the worker for the ``with`` block.

    A fresh interpreter, not a thread or a fork: the supervisor forks its children at any time, and a
    fork taken while another thread sits in a lock (the resolver's, a connection pool's) deadlocks
    the child. The beat watches this process and stops if the worker dies without stopping it.
    """
    command = [sys.executable, "-m", "conveyor", "beat", spec, "-l", loglevel, "--parent", str(os.getpid())]
    proc = subprocess.Popen(command)
    try:
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=lease)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
