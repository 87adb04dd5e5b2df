"""``conveyor enqueue``, ``purge`` and ``revoke``: send a task, empty a queue, or revoke tasks, from the shell."""

from __future__ import annotations

import json
from typing import Any

import click

from conveyor.app import App
from conveyor.arguments import check_arguments
from conveyor.cli._load import load_app


def _json_arg(value: str | None, what: str, kind: type) -> Any:
    if value is None:
        return kind()
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint=what) from exc
    if not isinstance(parsed, kind):
        raise click.BadParameter(f"must be a JSON {'array' if kind is list else 'object'}", param_hint=what)
    return parsed


@click.command()
@click.argument("app", envvar="CONVEYOR_APP")
@click.argument("task")
@click.option("--args", "args_json", help="Positional arguments as a JSON array, e.g. '[1, 2]'.")
@click.option("--kwargs", "kwargs_json", help='Keyword arguments as a JSON object, e.g. \'{"to": "a@b.c"}\'.')
@click.option("--queue", default=None, help="Queue to send to. [default: the task's]")
@click.option("--priority", type=click.IntRange(0, 9), default=None, help="0-9, higher runs first.")
@click.option("--countdown", type=float, default=None, help="Run no sooner than this many seconds from now.")
@click.option(
    "--wait", "wait_for", type=float, default=None, help="Wait this many seconds for the result and print it."
)
def enqueue(
    app: str,
    task: str,
    args_json: str | None,
    kwargs_json: str | None,
    queue: str | None,
    priority: int | None,
    countdown: float | None,
    wait_for: float | None,
) -> None:
    """Send TASK (its registered name) to APP's workers; print its id (and result with --wait)."""
    the_app = load_app(app)
    args = _json_arg(args_json, "--args", list)
    kwargs = _json_arg(kwargs_json, "--kwargs", dict)
    found = the_app.tasks.get(task)
    if found is None:
        known = ", ".join(sorted(the_app.tasks)) or "none"
        raise click.BadParameter(f"no task {task!r} on app {the_app.name!r}; known: {known}", param_hint="TASK")
    try:
        check_arguments(found.name, found.fn, args, kwargs)
    except TypeError as exc:
        raise click.BadParameter(str(exc), param_hint="--args/--kwargs") from None
    result = found.apply_async(args, kwargs, queue=queue, priority=priority, countdown=countdown)
    click.echo(result.id)
    if wait_for is not None:  # a failure or a timeout is one line and status 1 (cli/_errors.py)
        click.echo(json.dumps(result.get(timeout=wait_for)))


@click.command()
@click.argument("app", envvar="CONVEYOR_APP")
@click.argument("queue")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def purge(app: str, queue: str, yes: bool) -> None:
    """Delete QUEUE's ready and scheduled tasks (running ones are left alone).

    A queue that neither the broker nor the app's tasks know (a typo, most likely) gets a warning.
    """
    the_app = load_app(app, existing=True)
    known = _known_queues(the_app)
    if queue not in known:
        click.echo(
            f"Warning: no queue {queue!r} is known to app {the_app.name!r} or its broker "
            f"(known: {', '.join(sorted(known)) or 'none'}); nothing to purge there",
            err=True,
        )
    if not yes:
        click.confirm(f"Delete every waiting task of queue {queue!r}?", abort=True)
    click.echo(f"purged {the_app.broker.purge(queue)} task(s) from {queue}")


def _known_queues(app: App) -> set[str]:
    """Queues the broker counts, plus those the app's tasks and periodic entries send to."""
    known = {stats.queue for stats in app.broker.stats()} | {app.settings.default_queue}
    known |= {task.options.queue for task in app.tasks.values() if task.options.queue}
    return known | {entry.queue for entry in app.schedule.values() if entry.queue}


@click.command()
@click.argument("app", envvar="CONVEYOR_APP")
@click.argument("task_ids", nargs=-1, required=True)
@click.option("--terminate", is_flag=True, help="Also stop tasks that are running (their worker process is replaced).")
def revoke(app: str, task_ids: tuple[str, ...], terminate: bool) -> None:
    """Revoke tasks by id: a waiting task is deleted from its queue; with --terminate a running one is stopped."""
    the_app = load_app(app, existing=True)
    for task_id in task_ids:
        waiting = the_app.result(task_id).revoke(terminate=terminate, reason="revoked from the command line")
        where = "removed from its queue" if waiting else ("terminating if running" if terminate else "not waiting")
        click.echo(f"{task_id}: revoked ({where})")
