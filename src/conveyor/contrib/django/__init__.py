"""Django integration: settings from ``settings.CONVEYOR``, tasks found in installed apps, sends on commit.

::

    # mysite/settings.py
    INSTALLED_APPS = [..., "conveyor.contrib.django", "orders"]
    CONVEYOR = {"name": "mysite", "broker": "redis://localhost:6379/0"}

    # mysite/conveyor_app.py              (the worker runs: conveyor worker mysite.conveyor_app:app)
    import os
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
    from conveyor.contrib.django import app_from_settings, setup_django
    app = app_from_settings()
    setup_django()                        # after `app` exists: the installed apps' tasks.py import it

    # orders/tasks.py                      (imported by the app config when Django starts)
    from mysite.conveyor_app import app
    @app.task
    def send_receipt(order_id: int) -> str: ...

    # orders/views.py
    with transaction.atomic():
        order = Order.objects.create(...)
        delay_on_commit(send_receipt, order.id)   # sent once the row is committed; never on rollback

The worker closes Django's database connections it inherited and, around every task, the ones
past their ``CONN_MAX_AGE`` or broken (:class:`DjangoConnections`), as Django does around a request.
See docs/django.md.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar, Unpack

from conveyor.app import App
from conveyor.errors import ConfigurationError
from conveyor.message import SendOptions, new_id
from conveyor.middleware import Job, Middleware
from conveyor.result import AsyncResult
from conveyor.task import BaseTask

try:
    import django
    from django.apps import apps as registry  # not `apps`: the submodule apps.py would shadow it
    from django.conf import settings
    from django.db import close_old_connections, connections, transaction
except ImportError as exc:  # pragma: no cover - the django extra installs it
    raise ImportError("conveyor.contrib.django needs Django: pip install 'conveyor[django]'") from exc

__all__ = [
    "DjangoConnections",
    "app_from_settings",
    "apply_async_on_commit",
    "autodiscover",
    "delay_on_commit",
    "setup_django",
]

P = ParamSpec("P")
R = TypeVar("R")


def app_from_settings(setting: str = "CONVEYOR") -> App:
    """Build the conveyor app from the Django setting ``setting``, a dict of ``App`` keyword arguments.

    ``{"name": "mysite", "broker": "redis://...", "backend": ..., "retries": ...}``: ``name`` (default
    ``"django"``) and any :class:`~conveyor.settings.Settings` field, keys in any case. ``CONVEYOR_*``
    environment variables still override them, as for any app. Reading settings does not need Django
    set up; call :func:`setup_django` once the module holds the app. The :class:`DjangoConnections`
    middleware is added.

    Raises:
        ConfigurationError: no settings (``DJANGO_SETTINGS_MODULE`` unset), the setting is not a dict,
            or it holds an unknown key or a bad value.
    """
    if not settings.configured and "DJANGO_SETTINGS_MODULE" not in os.environ:
        raise ConfigurationError("conveyor.contrib.django needs DJANGO_SETTINGS_MODULE (or settings.configure())")
    raw = getattr(settings, setting, {})
    if not isinstance(raw, Mapping):
        raise ConfigurationError(f"settings.{setting} must be a dict of App keyword arguments, got {raw!r}")
    options: dict[str, Any] = {str(key).lower(): value for key, value in raw.items()}
    name = str(options.pop("name", "django"))
    middleware = list(options.pop("middleware", ()))
    return App(name, middleware=[DjangoConnections(), *middleware], **options)


def autodiscover(module: str = "tasks") -> list[str]:
    """Import ``module`` (``tasks``) of every installed Django app that has one; returns the modules imported.

    The ``conveyor.contrib.django`` app config calls this when Django is ready. A ``tasks`` module
    that exists but fails to import raises: a task the worker does not know would be dead-lettered.
    """
    found: list[str] = []
    for config in registry.get_app_configs():
        name = f"{config.name}.{module}"
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name)
            found.append(name)
    return found


def delay_on_commit(task: BaseTask[P, R], *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
    """Send ``task(*args, **kwargs)`` once the current database transaction commits (at once outside one).

    A task sent from inside ``transaction.atomic()`` would otherwise reach a worker before the rows it
    reads are committed (or after they were rolled back). The arguments are checked now, so a wrong
    call fails in the view; the result handle is returned now too (its id is fixed here), and stays
    PENDING for good if the transaction rolls back, as nothing is sent.
    """
    return apply_async_on_commit(task, args, kwargs)


def apply_async_on_commit(
    task: BaseTask[P, R],
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    using: str | None = None,
    **options: Unpack[SendOptions],
) -> AsyncResult[R]:
    """``task.apply_async(args, kwargs, **options)`` once the transaction on database ``using`` commits.

    The handle returned is of the id the task will have (``task_id=`` or a fresh one). With ``key=``,
    a call that folds onto a task still pending under that key sends nothing, and this handle's id
    stays PENDING: read the key's task through its own handle.

    Raises:
        TypeError: a missing or unexpected argument (now, not at commit).
        EncodeError: an argument that would not arrive as sent (now, not at commit).
    """
    task.message(args, kwargs, **options)  # bad options fail here
    task.check_call(args, kwargs)
    task_id = options.get("task_id") or new_id()
    options["task_id"] = task_id
    transaction.on_commit(lambda: task.apply_async(args, kwargs, **options), using=using, robust=False)
    return AsyncResult(task_id, task.app)


class DjangoConnections(Middleware):
    """Django's database connection hygiene in a worker, as Django does around each request.

    A worker child closes the connections it inherited (a forked socket is not its own), and closes
    the connections that are past ``CONN_MAX_AGE`` or unusable before and after every task. Inside a
    transaction (a test run in eager mode, within Django's ``TestCase``) it leaves them alone, as
    Django's test client does: closing them would end the test's transaction.
    """

    def on_child_start(self, app: App) -> None:
        if not _in_transaction():
            connections.close_all()

    def around_call(self, job: Job) -> contextlib.AbstractContextManager[None]:
        return _fresh_connections()

    def around_acall(self, job: Job) -> contextlib.AbstractAsyncContextManager[None]:
        # Django's connections are synchronous: an async task that uses the ORM goes through
        # sync_to_async, whose thread Django cleans up itself.
        return contextlib.nullcontext()


@contextlib.contextmanager
def _fresh_connections() -> Iterator[None]:
    if _in_transaction():
        yield
        return
    close_old_connections()
    try:
        yield
    finally:
        close_old_connections()


def _in_transaction() -> bool:
    """Whether a connection of this thread is inside ``atomic()`` (its work is not committed yet)."""
    return any(conn.in_atomic_block for conn in connections.all(initialized_only=True))


def setup_django() -> None:
    """Set Django up unless it is (or is being) set up: its app registry imports the apps' ``tasks`` modules.

    A worker imports the conveyor app's module before anything else, so that module calls this once
    its app exists (the ``tasks`` modules import it). In a web process Django is set up already, and
    this does nothing.
    """
    if registry.ready or registry.loading:
        return
    django.setup()
