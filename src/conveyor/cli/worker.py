"""``conveyor worker``: run a worker for an app."""

from __future__ import annotations

import sys

import click

from conveyor.cli._load import load_app
from conveyor.errors import ConfigurationError
from conveyor.scheduler.beat import embedded
from conveyor.worker import POOLS, Worker, setup_logging


@click.command()
@click.argument("app", envvar="CONVEYOR_APP")
@click.option("-c", "--concurrency", type=click.IntRange(min=1), help="Tasks run at once. [default: CPU count]")
@click.option("-Q", "--queues", default=None, help="Comma-separated queues to serve, highest priority first.")
@click.option(
    "--pool",
    type=click.Choice(POOLS),
    default="process",
    show_default=True,
    help="process: a child process per slot (isolated, crash-safe); thread: threads in one child.",
)
@click.option("-l", "--loglevel", default=None, help="DEBUG, INFO, WARNING or ERROR. [default: the app's log_level]")
@click.option(
    "--beat", "with_beat", is_flag=True, help="Also run a beat (periodic entries) on a thread of the supervisor."
)
def worker(
    app: str, concurrency: int | None, queues: str | None, pool: str, loglevel: str | None, with_beat: bool
) -> None:
    """Run a worker serving APP (MODULE:ATTR, e.g. shop.tasks:app).

    SIGTERM or Ctrl-C stops gracefully: unstarted tasks go back to the queue at once and running
    ones finish within the app's shutdown_grace; a second signal (or SIGQUIT) stops at once, and
    the tasks it interrupts run again. With --beat, the supervisor also runs a beat, which competes
    for the leader lease with every other beat, so any number of workers may pass --beat.
    """
    the_app = load_app(app)
    setup_logging(loglevel or the_app.settings.log_level)
    names = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    try:
        runner = Worker(the_app, concurrency=concurrency, queues=names, pool=pool)
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from exc
    if not with_beat:
        sys.exit(runner.run())
    with embedded(the_app):
        code = runner.run()
    sys.exit(code)
