"""``conveyor status``: queues with their depths, and live workers."""

from __future__ import annotations

import json
import time

import click

from conveyor.cli._load import load_app
from conveyor.cli.beat import print_entries
from conveyor.scheduler.beat import overview
from conveyor.settings import redact_url


@click.command()
@click.argument("app", envvar="CONVEYOR_APP")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def status(app: str, as_json: bool) -> None:
    """Show APP's queues (ready, scheduled, in flight, dead), its live workers and its periodic entries."""
    the_app = load_app(app, existing=True)
    queues = the_app.broker.stats()
    workers = the_app.broker.workers()
    entries = overview(the_app)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "queues": [q.__dict__ if hasattr(q, "__dict__") else _asdict(q) for q in queues],
                    "workers": [w.to_dict() for w in workers],
                    "periodic": [e.to_dict() for e in entries],
                },
                indent=2,
            )
        )
        return
    from rich.console import Console  # only when a table is printed: see cli/__init__.py
    from rich.table import Table

    console = Console()
    table = Table(title=f"queues of {the_app.name} ({redact_url(the_app.settings.broker_url)})")
    for column in ("queue", "ready", "scheduled", "in flight", "dead"):
        table.add_column(column, justify="left" if column == "queue" else "right")
    for q in queues:
        table.add_row(q.queue, str(q.ready), str(q.scheduled), str(q.in_flight), str(q.dead))
    console.print(table)
    wtable = Table(title=f"live workers: {len(workers)}")
    for column in ("worker", "queues", "pool", "concurrency", "processed", "failed", "up", "last seen"):
        wtable.add_column(column)
    now = time.time()
    for w in workers:
        wtable.add_row(
            w.id,
            ",".join(w.queues),
            w.pool,
            str(w.concurrency),
            str(w.processed),
            str(w.failed),
            f"{now - w.started:.0f}s",
            f"{now - w.last_seen:.1f}s ago",
        )
    console.print(wtable)
    if entries:
        print_entries(the_app, entries)


def _asdict(obj: object) -> dict[str, object]:
    import dataclasses

    return dataclasses.asdict(obj)  # type: ignore[call-overload, no-any-return]
