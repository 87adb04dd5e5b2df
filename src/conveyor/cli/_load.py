"""Import the user's app from a ``module:attribute`` string, with errors that say what to fix."""

from __future__ import annotations

import importlib
import os
import sys

import click

from conveyor.app import App
from conveyor.cli._errors import CommandError
from conveyor.settings import redact_url, sqlite_file


def load_app(spec: str, *, existing: bool = False) -> App:
    """Import ``module.path:attr`` (``:app`` when the attribute is omitted) from the current directory.

    Args:
        spec: ``MODULE:ATTR``.
        existing: the command only looks at what is there (status, result, dead letters, revoke):
            a SQLite database file that does not exist is an error, not a new empty file.

    Raises:
        click.BadParameter: the module does not import, the attribute is missing or is not an App.
        CommandError: ``existing`` and a SQLite file of the app does not exist.
    """
    module_name, _, attr = spec.partition(":")
    attr = attr or "app"
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise click.BadParameter(
                f"cannot import module {module_name!r} (from {os.getcwd()}); give MODULE:APP, e.g. shop.tasks:app",
                param_hint="APP",
            ) from exc
        raise
    app = getattr(module, attr, None)
    if app is None:
        raise click.BadParameter(f"module {module_name!r} has no attribute {attr!r}", param_hint="APP")
    if not isinstance(app, App):
        raise click.BadParameter(f"{spec!r} is a {type(app).__name__}, not a conveyor App", param_hint="APP")
    if existing:
        refuse_missing_database(app)
    return app


def refuse_missing_database(app: App) -> None:
    """Refuse an app whose SQLite broker or backend file does not exist (opening it would create it empty).

    The default ``sqlite:///conveyor.db`` is relative to the directory a process starts in: a command
    run from elsewhere would otherwise make a second, empty database and report no tasks and no
    workers (issue 14, friction 2).

    Raises:
        CommandError: the file does not exist.
    """
    for setting, url in (("broker_url", app.settings.broker_url), ("backend_url", app.settings.result_url)):
        path = sqlite_file(url)
        if path is not None and not path.exists():
            raise CommandError(
                f"no SQLite database at {path} (app {app.name!r}, {setting} {redact_url(url)}): nothing was ever "
                "sent there, and this command does not create one. Run it in the directory the worker runs in, "
                "or give the same absolute URL to producers, workers and commands, e.g. "
                "CONVEYOR_BROKER_URL=sqlite:////srv/shop/conveyor.db"
            )
