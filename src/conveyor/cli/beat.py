"""``conveyor beat``: fire an app's periodic entries (any number of beats may run; one leads)."""

from __future__ import annotations

import sys

import click

from conveyor.app import App
from conveyor.cli._load import load_app
from conveyor.cli._options import loglevel
from conveyor.errors import ConfigurationError
from conveyor.logging import configure as configure_logging
from conveyor.scheduler.beat import EntryInfo, check_shareable, overview, run_forever
from conveyor.worker.startup import check_reachable


@click.command()
@click.argument("app", envvar="CONVEYOR_APP")
@click.option(
    "--list", "list_only", is_flag=True, help="Print the periodic entries and their next run times, then exit."
)
@loglevel
@click.option("--parent", type=int, default=None, hidden=True, help="Stop when this process (worker --beat) exits.")
def beat(app: str, list_only: bool, loglevel: str | None, parent: int | None) -> None:
    """Fire APP's periodic entries (MODULE:ATTR, e.g. shop.tasks:app).

    Run as many beats as you like, on any machines: one holds the leader lease and fires, the
    others stand by and one takes over within beat_lease seconds if it dies. No slot fires twice.
    SIGTERM or Ctrl-C stops, giving the lease up at once. A broker or backend that does not answer
    within startup_timeout seconds at start is one error line and exit status 1.
    """
    the_app = load_app(app)
    if list_only:
        print_entries(the_app, overview(the_app, with_state=False), with_state=False)
        return
    if not the_app.schedule:
        raise click.UsageError(f"app {the_app.name!r} has no periodic entries (declare them with @app.periodic)")
    try:
        check_shareable(the_app)
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from exc
    check_reachable(the_app, the_app.settings.startup_timeout)  # a dead broker: one line and exit 1, as a worker
    configure_logging(the_app, loglevel)
    sys.exit(run_forever(the_app, parent=parent))


def print_entries(app: App, rows: list[EntryInfo], *, with_state: bool = True) -> None:
    """The entries as a table (shared with ``conveyor status``, which adds the last slot recorded)."""
    from rich.console import Console  # only when a table is printed: see cli/__init__.py
    from rich.table import Table

    table = Table(title=f"periodic entries of {app.name}: {len(rows)}")
    columns = ["entry", "task", "schedule", "missed", "catch up", "next run"] + (["last fired"] if with_state else [])
    for column in columns:
        table.add_column(column)
    for row in rows:
        cells = [row.name, row.task, row.schedule, row.missed, "yes" if row.catch_up else "no", row.next_run]
        table.add_row(*cells, *([row.last_fired or "-"] if with_state else []))
    Console().print(table)
