"""How every ``conveyor`` command reports an error: one line on stderr and an exit status, no traceback.

A conveyor error is the user's to fix, and its message already says how, so a 50-line traceback
only hides it. The group class below wraps every subcommand (``worker``, ``beat``, ``status``,
``dlq ...``) the same way:

- exit status **2** (usage): the command line or the configuration is wrong. A
  :class:`~conveyor.errors.ConfigurationError` (a bad ``App(...)`` setting or ``CONVEYOR_*`` variable,
  an unknown URL scheme, RabbitMQ without a result backend) prints ``Error: <message>``; click's own
  usage errors (a bad option value such as ``--loglevel bogus``) keep click's format (usage line,
  hint, ``Error:`` line).
- exit status **1** (runtime): the command was right but something failed while it ran: the broker
  did not answer (:class:`~conveyor.errors.BrokerUnavailable`), a result was not ready, a task
  waited for failed (``the task failed: ValueError: ...``), any other
  :class:`~conveyor.errors.ConveyorError`.

Passwords in URLs are masked in the line (:func:`conveyor.settings.redact_text`). Exceptions that are
not conveyor's (a bug, an error raised by the user's module) keep their traceback, and
``conveyor --traceback COMMAND`` shows it for conveyor's too.
"""

from __future__ import annotations

from typing import IO, Any

import click

from conveyor.errors import ConfigurationError, ConveyorError, TaskFailed
from conveyor.settings import redact_text

#: Exit status of a command whose command line or configuration is wrong (click's usage status).
USAGE = 2
#: Exit status of a command that failed while it ran.
RUNTIME = 1


class CommandError(click.ClickException):
    """A conveyor error that failed a command while it ran: one ``Error: ...`` line, exit status 1."""

    exit_code = RUNTIME

    def __init__(self, message: str) -> None:
        super().__init__(redact_text(message))

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"Error: {self.format_message()}", file=file, err=True)


class ConfigurationProblem(CommandError):
    """A wrong configuration: one ``Error: ...`` line, exit status 2 (a usage error)."""

    exit_code = USAGE


def as_command_error(exc: BaseException) -> CommandError | None:
    """The one-line form of ``exc`` if it is conveyor's (or a usage error raised from one), else None."""
    if isinstance(exc, ConfigurationError):
        return ConfigurationProblem(str(exc))
    if isinstance(exc, TaskFailed):  # also the task's own type, whose str() is its bare message
        return CommandError(f"the task failed: {exc.type_name}: {exc.remote_message}")
    if isinstance(exc, ConveyorError):
        return CommandError(str(exc))
    if isinstance(exc, click.UsageError) and isinstance(exc.__cause__, ConfigurationError):
        return ConfigurationProblem(str(exc.__cause__))  # a command that wrapped it itself (worker --pool)
    return None


class ConveyorGroup(click.Group):
    """The ``conveyor`` group: runs a subcommand and turns conveyor's errors into one line (see module)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (ConveyorError, click.UsageError) as exc:
            error = None if ctx.params.get("show_traceback") else as_command_error(exc)
            if error is None:
                raise
            raise error from None
