"""Finding an app's tasks in other modules: ``App(include=[...])`` and ``App(autodiscover=[...])``.

A task is registered when the module that declares it is imported. A worker started as
``conveyor worker shop.tasks:app`` imports ``shop.tasks`` only, so a task declared in
``shop/billing.py`` was unknown to it, and its messages were dead-lettered (issue 14, friction 7).
The app imports these modules when it is finalized (a worker, ``conveyor tasks``, ``drain``),
not when it is built: a module named there usually imports the app itself.

- ``include``: module names, each imported (as Celery's ``include=``).
- ``autodiscover``: package names; in each, every module named ``tasks`` is imported, the package's own
  (``shop.tasks``) and its subpackages' (``shop.billing.tasks``), as Celery's ``autodiscover_tasks``
  imports ``<package>.tasks`` for each package it is given (and Django's apps each have one).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from typing import TYPE_CHECKING

from conveyor.errors import ConfigurationError
from conveyor.message import Message
from conveyor.results import Entry, entry, not_registered

if TYPE_CHECKING:
    from conveyor.app import App

#: The module name ``autodiscover`` looks for in each package, as in Celery.
TASKS_MODULE = "tasks"


def import_modules(include: Iterable[str], autodiscover: Iterable[str]) -> list[str]:
    """Import every module of ``include`` and every ``tasks`` module under ``autodiscover``; return their names.

    Raises:
        ConfigurationError: a module or package that does not import (the error names it and why). An
            error raised by the module's own code (not a missing module) propagates unchanged: it is a
            bug in that module, and its traceback is what fixes it.
    """
    imported = [_import(name, "include") for name in include]
    for package in autodiscover:
        imported += _discover(package)
    return imported


def _import(name: str, setting: str) -> str:
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise ConfigurationError(f"{setting}: cannot import module {name!r}: {exc}") from exc
        raise
    return name


def _discover(package: str) -> list[str]:
    """The ``tasks`` modules of ``package`` and of its subpackages, imported."""
    module = importlib.import_module(_import(package, "autodiscover"))
    path = getattr(module, "__path__", None)
    if path is None:
        raise ConfigurationError(
            f"autodiscover: {package!r} is a module, not a package; name it in include=[...] instead"
        )
    found = []
    for info in pkgutil.walk_packages(path, prefix=package + "."):
        if info.name.rpartition(".")[2] == TASKS_MODULE:
            found.append(_import(info.name, "autodiscover"))
    return found


def unknown_task(app: App, message: Message) -> tuple[str, Entry]:
    """Why a message's task cannot run in this worker and how to fix it, and the FAILURE its producer reads.

    The worker never imported the module that declares the task: the message is dead-lettered (to be
    requeued once the worker knows the task) and its result says so, so ``get()`` raises instead of
    waiting on PENDING.
    """
    name = message.task
    module = name.rpartition(".")[0]
    known = ", ".join(sorted(app.tasks)) or "none"
    fix = f"App(..., include=[{module!r}])" if module else "App(..., include=[...])"
    why = (
        f"task {name!r} is not registered on app {app.name!r}: the worker never imported the module that declares it; "
        f"add {fix} (or autodiscover=[...]), restart the worker, then `conveyor dlq requeue` it (known: {known})"
    )
    return why, entry(message.id, not_registered(message, why))
