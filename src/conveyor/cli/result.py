"""``conveyor result``: a task's state, and its result or error, from the shell."""

from __future__ import annotations

import datetime
import json
from typing import Any

import click
import msgspec

from conveyor.cli._load import load_app
from conveyor.states import ResultRecord, State


@click.command()
@click.argument("app", envvar="CONVEYOR_APP")
@click.argument("task_id")
@click.option("--wait", "wait_for", type=float, default=None, help="Wait up to this many seconds for it to finish.")
@click.option("--json", "as_json", is_flag=True, help="Print the stored record as JSON.")
@click.option("-t", "--tracebacks", is_flag=True, help="Print every failed attempt with its traceback.")
def result(app: str, task_id: str, wait_for: float | None, as_json: bool, tracebacks: bool) -> None:
    """Show TASK_ID's state, then its result, error or progress (APP is MODULE:ATTR, e.g. shop.tasks:app).

    A task nothing is recorded for is PENDING: not started yet, an unknown id, or a result that
    expired (result_ttl). With --wait, exits 1 if it did not finish in time.
    """
    handle = load_app(app, existing=True).result(task_id)
    if wait_for is not None:
        handle.get(timeout=wait_for, propagate=False)  # ResultTimeout: one line, exit status 1
    record = handle.info
    if as_json:
        body: dict[str, Any] = {"state": State.PENDING} if record is None else msgspec.to_builtins(record)
        click.echo(json.dumps({"id": task_id, **body}, indent=2, default=str))
        return
    for label, value in _lines(task_id, record):
        click.echo(f"{label + ':':<10}{value}")
    if tracebacks and record is not None:
        for error in record.errors:
            click.echo(f"\nattempt {error.attempt}: {error.type}: {error.message}\n{error.traceback.rstrip()}")


def _lines(task_id: str, record: ResultRecord | None) -> list[tuple[str, str]]:
    """What to print for a record, label by label."""
    if record is None:
        return [("id", task_id), ("state", "PENDING (nothing recorded: not started yet, an unknown id, or expired)")]
    lines = [("id", task_id), ("task", record.task or "?"), ("state", str(record.state))]
    if record.state is State.SUCCESS:
        lines.append(("result", json.dumps(record.value, default=str)))
    elif record.error is not None:
        lines.append(("error", f"{record.error.type}: {record.error.message}"))
    if record.note:
        lines.append(("note", record.note))
    if record.progress is not None and not record.state.final:
        lines.append(("progress", f"{record.progress:.0%}"))
    if record.eta is not None:
        lines.append(("next try", _when(record.eta)))
    lines.append(("attempts", f"{record.attempt + 1} ({len(record.errors)} failed)"))
    if record.worker:
        lines.append(("worker", record.worker))
    for label, moment in (("started", record.started), ("finished", record.finished)):
        if moment is not None:
            lines.append((label, _when(moment)))
    return lines


def _when(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp).astimezone().isoformat(sep=" ", timespec="milliseconds")
