"""Import the user's app from a ``module:attribute`` string, with errors that say what to fix."""

from __future__ import annotations

import importlib
import os
import sys

import click

from conveyor.app import App


def load_app(spec: str) -> App:
    """Import ``module.path:attr`` (``:app`` when the attribute is omitted) from the current directory.

    Raises:
        click.BadParameter: the module does not import, the attribute is missing or is not an App.
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
    return app
