"""``conveyor dlq``: list, show, requeue and purge dead letters."""

from __future__ import annotations

import datetime

import click

from conveyor.cli._load import load_app
from conveyor.codec import Codec
from conveyor.errors import DecodeError
from conveyor.states import ErrorInfo


@click.group()
def dlq() -> None:
    """Dead letters: tasks that will not run again until requeued (unknown task, undecodable, poison...)."""


@dlq.command("list")
@click.argument("app", envvar="CONVEYOR_APP")
@click.option("--queue", default=None, help="Only this queue's dead letters.")
@click.option("--limit", type=int, default=50, show_default=True)
def list_(app: str, queue: str | None, limit: int) -> None:
    """List APP's dead letters, oldest first, with their reasons."""
    the_app = load_app(app, existing=True)
    from rich.console import Console  # only when a table is printed: see cli/__init__.py
    from rich.table import Table

    table = Table(title="dead letters")
    for column in ("id", "queue", "task", "when", "deliveries", "reason"):
        table.add_column(column)
    for dead in the_app.broker.dead_letters(limit=limit, queue=queue):
        when = datetime.datetime.fromtimestamp(dead.dead_at).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(dead.id, dead.queue, _task_name(dead.body), when, str(dead.deliveries), dead.reason)
    Console().print(table)


@dlq.command()
@click.argument("app", envvar="CONVEYOR_APP")
@click.argument("task_id")
def show(app: str, task_id: str) -> None:
    """Show one dead letter: its reason, raw message, and the traceback of each failed attempt."""
    the_app = load_app(app, existing=True)
    for dead in the_app.broker.dead_letters(limit=100_000):
        if dead.id == task_id:
            click.echo(f"id:         {dead.id}\nqueue:      {dead.queue}\nreason:     {dead.reason}")
            click.echo(f"deliveries: {dead.deliveries}\nmessage:    {dead.body.decode('utf-8', 'replace')}")
            _echo_errors(the_app.result(task_id).errors)
            return
    raise click.ClickException(f"no dead letter with id {task_id}")


@dlq.command()
@click.argument("app", envvar="CONVEYOR_APP")
@click.argument("task_ids", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Requeue every dead letter.")
def requeue(app: str, task_ids: tuple[str, ...], everything: bool) -> None:
    """Put dead letters (TASK_IDS, or --all) back on their queues."""
    if not task_ids and not everything:
        raise click.UsageError("give task ids, or --all")
    the_app = load_app(app, existing=True)
    click.echo(f"requeued {the_app.broker.requeue_dead(None if everything else list(task_ids))} task(s)")


@dlq.command("purge")
@click.argument("app", envvar="CONVEYOR_APP")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def purge_(app: str, yes: bool) -> None:
    """Delete every dead letter."""
    the_app = load_app(app, existing=True)
    if not yes:
        click.confirm("Delete every dead letter?", abort=True)
    click.echo(f"deleted {the_app.broker.purge_dead()} dead letter(s)")


def _echo_errors(errors: list[ErrorInfo]) -> None:
    """Print each failed attempt the result backend kept for a dead letter, with its traceback."""
    for error in errors:
        click.echo(f"\nattempt {error.attempt}: {error.type}: {error.message}\n{error.traceback.rstrip()}")


def _task_name(body: bytes) -> str:
    try:
        return Codec().decode(body).task  # the plain codec: shows a signed body's task without the secret
    except DecodeError:
        return "(undecodable)"
