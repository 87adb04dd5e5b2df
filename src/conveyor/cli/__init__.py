"""The ``conveyor`` command line: worker, beat, status, tasks, enqueue, result, dead letters, events, inspect,
queues, dashboard, db migrate.

Every command takes the app as ``MODULE:ATTR`` (or ``CONVEYOR_APP``) and reads the same
settings the app has (``App(...)`` keywords, overridden by ``CONVEYOR_*`` variables).
"""

from __future__ import annotations

import click

from conveyor.cli._errors import ConveyorGroup
from conveyor.cli.beat import beat
from conveyor.cli.dashboard import dashboard
from conveyor.cli.db import db
from conveyor.cli.dlq import dlq
from conveyor.cli.observe import events, inspect_, queue
from conveyor.cli.registered import tasks as list_tasks  # not "tasks": the cli.tasks submodule takes that name
from conveyor.cli.result import result
from conveyor.cli.status import status
from conveyor.cli.tasks import enqueue, purge, revoke
from conveyor.cli.worker import worker


@click.group(cls=ConveyorGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="conveyor")
@click.option("--traceback", "show_traceback", is_flag=True, help="Show the full traceback of an error.")
def main(show_traceback: bool) -> None:
    """conveyor: a distributed task queue that never loses a task.

    Start a worker for your app with `conveyor worker shop.tasks:app`, watch it with
    `conveyor status shop.tasks:app`. Settings come from App(...) and CONVEYOR_* variables,
    e.g. CONVEYOR_BROKER_URL=redis://localhost:6379/0.

    An error is one line on stderr; the exit status is 2 when the command line or the
    configuration is wrong, 1 when something failed while the command ran (--traceback shows more).
    """


main.add_command(worker)
main.add_command(beat)
main.add_command(status)
main.add_command(enqueue)
main.add_command(purge)
main.add_command(revoke)
main.add_command(result)
main.add_command(dlq)
main.add_command(db)
main.add_command(list_tasks)
main.add_command(events)
main.add_command(inspect_)
main.add_command(queue)
main.add_command(dashboard)


def run() -> None:
    """The ``conveyor`` command and ``python -m conveyor``: :func:`main`, then an exit without the teardown."""
    from conveyor.cli._exit import run as run_and_exit

    run_and_exit(main)
