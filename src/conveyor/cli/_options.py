"""Options several commands share, declared once so they check their values the same way."""

from __future__ import annotations

import click

#: The levels ``--loglevel`` accepts: the ones the ``log_level`` setting accepts.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

#: ``-l/--loglevel``: checked by click (``--loglevel bogus`` is a usage error naming the choices), any case.
loglevel = click.option(
    "-l",
    "--loglevel",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default=None,
    help="DEBUG, INFO, WARNING or ERROR. [default: the app's log_level]",
)
