"""``conveyor events``, ``conveyor inspect`` and ``conveyor queue``: watch a running system, pause a queue."""

from __future__ import annotations

import datetime
import json
import time

import click

from conveyor import eventlog, inspect
from conveyor.app import App
from conveyor.cli._load import load_app
from conveyor.eventlog import Event
from conveyor.pausing import pause as pause_queue
from conveyor.pausing import resume as resume_queue
from conveyor.scheduler.beat import overview


def _no_log(app: App) -> click.ClickException:
    return click.ClickException(f"the result backend of {app.name!r} keeps no event log")


@click.command()
@click.argument("app", envvar="CONVEYOR_APP")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of text.")
@click.option("--all", "from_start", is_flag=True, help="Start from the oldest event the log keeps, not from now.")
@click.option("--kind", "kinds", multiple=True, type=click.Choice(eventlog.KINDS), help="Only these kinds (repeat).")
@click.option("--for", "seconds", type=float, default=None, help="Stop after this many seconds. [default: Ctrl-C]")
def events(app: str, as_json: bool, from_start: bool, kinds: tuple[str, ...], seconds: float | None) -> None:
    """Follow APP's task and worker events live (received, succeeded, failed, retried, worker online...).

    Workers publish them in batches every half second to the result backend's event log, which keeps
    the last hour (the events_ttl setting); --all replays what it keeps first.
    """
    the_app = load_app(app)
    backend = the_app.backend  # built (its client imported) before the clock of --for starts
    try:
        after = None if from_start else backend.last_event_cursor()
    except NotImplementedError:
        raise _no_log(the_app) from None
    until = None if seconds is None else time.monotonic() + seconds
    try:
        for event in eventlog.follow(backend, after, until=until):
            if kinds and event.kind not in kinds:
                continue
            click.echo(json.dumps(event.to_dict()) if as_json else format_event(event))
    except KeyboardInterrupt:
        pass


def format_event(event: Event) -> str:
    """One line of ``conveyor events``."""
    when = datetime.datetime.fromtimestamp(event.at).strftime("%H:%M:%S.%f")[:-3]
    if event.kind.startswith("worker-"):
        info = event.info
        return f"{when} {event.kind:<19} {event.worker} processed={info.get('processed')} failed={info.get('failed')}"
    what = f"{event.task or '?'}[{event.id}]"
    extra = f" queue={event.queue}" if event.queue else ""
    if event.runtime is not None:
        extra += f" {event.runtime:.3f}s"
    if event.deliveries > 1:
        extra += f" delivery {event.deliveries}"
    return f"{when} {event.kind:<19} {what}{extra} ({event.worker})"


@click.command(name="inspect")
@click.argument("app", envvar="CONVEYOR_APP")
@click.argument("what", type=click.Choice(["active", "reserved", "scheduled", "workers", "registered"]))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def inspect_(app: str, what: str, as_json: bool) -> None:
    """Show what APP's live workers hold: active (running) or reserved tasks, workers, scheduled, registered tasks.

    active and reserved come from the workers' events (up to 2 s old); scheduled lists the queues' counts
    of delayed messages and the periodic entries' next runs; registered lists APP's tasks.
    """
    the_app = load_app(app)
    rows: list[dict[str, object]]
    try:
        if what in ("active", "reserved"):
            active, reserved = inspect.held(the_app)
            rows = [v.to_dict() for v in (active if what == "active" else reserved)]
        elif what == "workers":
            rows = [w.to_dict() for w in inspect.workers(the_app)]
        elif what == "registered":
            rows = inspect.registered(the_app)
        else:
            rows = [{"queue": q.stats.queue, "scheduled": q.stats.scheduled} for q in inspect.queues(the_app)]
            rows += [{"periodic": e.name, "task": e.task, "next_run": e.next_run} for e in overview(the_app)]
    except NotImplementedError:
        raise _no_log(the_app) from None
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    _print_table(f"{what} ({len(rows)})", rows)


def _print_table(title: str, rows: list[dict[str, object]]) -> None:
    from rich.console import Console  # only when a table is printed: see cli/__init__.py
    from rich.table import Table

    table = Table(title=title)
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    Console().print(table)


@click.group()
def queue() -> None:
    """Queues: list them with their counts, pause and resume them across every worker."""


@queue.command("list")
@click.argument("app", envvar="CONVEYOR_APP")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_queues(app: str, as_json: bool) -> None:
    """List APP's queues: ready, scheduled, in flight, dead, paused."""
    rows: list[dict[str, object]] = [q.to_dict() for q in inspect.queues(load_app(app))]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        _print_table("queues", rows)


@queue.command()
@click.argument("app", envvar="CONVEYOR_APP")
@click.argument("name")
def pause(app: str, name: str) -> None:
    """Stop every worker of APP from taking tasks from queue NAME (within a second) until resumed.

    Running tasks finish; tasks already reserved run; enqueueing to NAME goes on.
    """
    pause_queue(load_app(app).backend, name)
    click.echo(f"paused queue {name}")


@queue.command()
@click.argument("app", envvar="CONVEYOR_APP")
@click.argument("name")
def resume(app: str, name: str) -> None:
    """Let APP's workers take tasks from queue NAME again."""
    resume_queue(load_app(app).backend, name)
    click.echo(f"resumed queue {name}")
