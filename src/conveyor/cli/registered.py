"""``conveyor tasks``: the tasks a worker for the app would know, with their queues and options."""

from __future__ import annotations

import json
from typing import Any

import click

from conveyor.cli._load import load_app
from conveyor.task import BaseTask


@click.command("tasks")
@click.argument("app", envvar="CONVEYOR_APP")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def tasks(app: str, as_json: bool) -> None:
    """List the tasks registered on APP, after importing its include=/autodiscover= modules as a worker does.

    A task missing here is unknown to `conveyor worker APP`: its messages are dead-lettered and
    recorded FAILURE. Import its module from APP's module, or name it in App(include=[...]).
    """
    the_app = load_app(app)
    rows = [_describe(task) for task in the_app.load_tasks().values()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console  # only when a table is printed: see cli/__init__.py
    from rich.table import Table

    table = Table(title=f"tasks of {the_app.name}: {len(rows)}")
    for column in ("task", "queue", "priority", "retries", "time limit", "kind"):
        table.add_column(column)
    for row in rows:
        limit = "-" if row["time_limit"] is None else f"{row['time_limit']:g}s"
        cells = (row["name"], row["queue"], str(row["priority"]), str(row["retries"]), limit, row["kind"])
        table.add_row(*cells)
    Console().print(table)


def _describe(task: BaseTask[Any, Any]) -> dict[str, Any]:
    options = task.options
    return {
        "name": task.name,
        "queue": options.queue or task.app.settings.default_queue,
        "priority": options.priority,
        "retries": options.retries,
        "time_limit": options.time_limit,
        "kind": "async" if task.is_async else "sync",
    }
