"""``conveyor enqueue``, ``purge`` and ``revoke``: send a task, empty a queue, or revoke tasks, from the shell."""

from __future__ import annotations

import json
from typing import Any

import click

from conveyor.app import App
from conveyor.arguments import check_arguments
from conveyor.cli._load import load_app
from conveyor.states import State


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
    """Revoke tasks by id: a waiting task is deleted from its queue; with --terminate a running one is stopped.

    A revocation is final: the task's state stays REVOKED whatever its worker does afterwards (a running
    task without --terminate runs to its end, but its result is discarded). Says what it found for each
    id; exits 1 if an id was unknown (nothing queued or recorded under it) or had already finished.
    """
    the_app = load_app(app, existing=True)
    missed = 0
    for task_id in task_ids:
        line, revoked = _revoke_one(the_app, task_id, terminate)
        click.echo(f"{task_id}: {line}", err=not revoked)
        missed += not revoked
    if missed:
        raise SystemExit(1)


def _revoke_one(app: App, task_id: str, terminate: bool) -> tuple[str, bool]:
    """Revoke one id; what to say about it, and whether a revocation is now in force."""
    handle = app.result(task_id)
    before = handle.state
    waiting = handle.revoke(terminate=terminate, reason="revoked from the command line")
    after = handle.state
    if after is not State.REVOKED:  # it finished first: a revocation does not replace a result
        return f"not revoked: it already finished ({after}); its result stands", False
    if waiting:
        return "revoked (removed from its queue)", True
    if before is State.REVOKED:
        return "revoked (it was already)", True
    if before is State.PENDING:
        return (
            "unknown id: no task with this id is queued and nothing is recorded for it (never sent, "
            "its result expired, or it is reserved by a worker and not started yet); it is recorded REVOKED "
            "in case it turns up, so it will not start",
            False,
        )
    if before is State.RETRY:
        return "revoked (it was waiting for a retry: it will not run again)", True
    if terminate:
        return "revoked (running: its worker process is being replaced)", True
    return "revoked (running: it runs to its end, but its result is discarded; --terminate stops it)", True
