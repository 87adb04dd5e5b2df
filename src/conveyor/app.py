"""App: the one object users build. It owns the settings, the task registry, the broker and the
result backend, and sends messages.

::

    app = App("shop")                                     # sqlite:///conveyor.db for both
    app = App("shop", broker="redis://localhost:6379/0")  # results on the same Redis

The broker and backend connect lazily on first use, so importing a module that builds an app
opens nothing, and a worker process forked from it opens its own connections.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, ParamSpec, Protocol, TypeVar, Unpack, overload

from conveyor.backends import ResultBackend
from conveyor.backends import check_url as check_backend_url
from conveyor.backends import from_url as backend_from_url
from conveyor.brokers import Broker, Envelope
from conveyor.brokers import from_url as broker_from_url
from conveyor.errors import ConfigurationError, TaskNotRegistered
from conveyor.message import Message, encode
from conveyor.result import AsyncResult
from conveyor.scheduler.entries import Entry, PeriodicOptions, build_entry
from conveyor.settings import Settings, redact_url
from conveyor.signing import sign
from conveyor.task import AsyncTask, BaseTask, Task, TaskOptions
from conveyor.workflows.signature import Signature

P = ParamSpec("P")
R = TypeVar("R")
TaskT = TypeVar("TaskT", bound=BaseTask[Any, Any])


class TaskDecorator(Protocol):
    """What ``@app.task(**options)`` returns: a decorator keeping the function's types."""

    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> AsyncTask[P, R]: ...  # type: ignore[overload-overlap]
    @overload
    def __call__(self, fn: Callable[P, R], /) -> Task[P, R]: ...


class App:
    """A conveyor application.

    Args:
        name: a short name for logs, status and the dashboard.
        broker: broker URL; defaults to ``sqlite:///conveyor.db`` (``CONVEYOR_BROKER_URL`` overrides).
        backend: result backend URL; defaults to the broker's (``CONVEYOR_BACKEND_URL`` overrides).
        **settings: any other field of :class:`~conveyor.settings.Settings`.

    Raises:
        ConfigurationError: an unknown setting or a bad value.
    """

    def __init__(self, name: str, *, broker: str | None = None, backend: str | None = None, **settings: Any) -> None:
        if broker is not None:
            settings["broker_url"] = broker
        if backend is not None:
            settings["backend_url"] = backend
        self.name = name
        self.settings = Settings.build(settings)
        check_backend_url(self.settings.result_url)  # e.g. amqp:// without backend=: an error now, not at first use
        self.tasks: dict[str, BaseTask[Any, Any]] = {}
        #: Periodic entries by name, fired by ``conveyor beat`` (or ``worker --beat``).
        self.schedule: dict[str, Entry] = {}
        self._lock = threading.Lock()
        self._broker: Broker | None = None
        self._backend: ResultBackend | None = None

    def __repr__(self) -> str:
        return f"<App {self.name} broker={redact_url(self.settings.broker_url)}>"

    @property
    def broker(self) -> Broker:
        """The broker, connected on first use; built with the backend as its store (RabbitMQ keeps state there)."""
        if self._broker is None:
            store = self.backend  # outside the lock, which building the backend takes
            with self._lock:
                if self._broker is None:
                    url, max_deliveries = self.settings.broker_url, self.settings.max_deliveries
                    self._broker = broker_from_url(url, max_deliveries=max_deliveries, store=store)
        return self._broker

    @property
    def backend(self) -> ResultBackend:
        """The result backend, connected on first use; shares the memory broker's process for ``memory://``."""
        if self._backend is None:
            with self._lock:
                if self._backend is None:
                    self._backend = backend_from_url(self.settings.result_url)
        return self._backend

    @overload
    def task(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> AsyncTask[P, R]: ...  # type: ignore[overload-overlap]
    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...
    @overload
    def task(self, /, **options: Any) -> TaskDecorator: ...

    def task(self, fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
        """Register a function as a task; use bare (``@app.task``) or with options (``@app.task(retries=3)``).

        Raises:
            ConfigurationError: an unknown option, a bad value, or a name already registered.
        """
        parsed = TaskOptions.build(options)

        def register(func: Callable[..., Any]) -> BaseTask[Any, Any]:
            cls = AsyncTask if _is_coroutine_function(func) else Task
            task: BaseTask[Any, Any] = cls(self, func, parsed)
            existing = self.tasks.get(task.name)
            if existing is not None and existing.fn is not func:
                raise ConfigurationError(f"a task named {task.name!r} is already registered on app {self.name!r}")
            self.tasks[task.name] = task
            return task

        return register if fn is None else register(fn)

    def periodic(self, **options: Unpack[PeriodicOptions]) -> Callable[[TaskT], TaskT]:
        """Run a task on a schedule; stack it above ``@app.task``, which it returns unchanged.

        ::

            @app.periodic(cron="*/5 * * * *", tz="Europe/Paris")
            @app.task
            def sweep() -> None: ...

        The task is called without arguments (use :meth:`add_periodic` for arguments). Options:
        see :class:`~conveyor.scheduler.entries.PeriodicOptions`.

        Raises:
            ConfigurationError: an unknown option, a bad schedule, a plain function instead of a
                task, or an entry name already used.
        """

        def declare(task: TaskT) -> TaskT:
            if not isinstance(task, BaseTask):
                raise ConfigurationError(f"@app.periodic goes above @app.task (got {task!r}, not a task)")
            self.add_periodic(task.s(), **options)
            return task

        return declare

    def add_periodic(self, signature: Signature[Any], **options: Unpack[PeriodicOptions]) -> Entry:
        """Send ``signature`` (e.g. ``report.s("daily", lang="fr")``) on a schedule; returns the entry.

        Raises:
            ConfigurationError: an unknown option, a bad schedule, arguments the task does not
                accept, or an entry name already used (give ``name=``).
            TaskNotRegistered: the signature's task is not registered on this app.
        """
        task = self.tasks.get(signature.task)
        if task is None:
            raise TaskNotRegistered(f"no task {signature.task!r} on app {self.name!r}; register it first")
        entry = build_entry(task, signature, options)
        if entry.name in self.schedule:
            raise ConfigurationError(f"a periodic entry named {entry.name!r} exists already; give name=...")
        self.schedule[entry.name] = entry
        return entry

    def send(self, messages: Sequence[Message]) -> list[str]:
        """Encode and enqueue messages in one batch; return the id each task lives under.

        Raises:
            EncodeError: an argument does not serialize (nothing of the batch is sent).
            MessageTooLarge: a message is over ``max_message_size``.
            BrokerUnavailable: the broker did not answer.
            DuplicateTaskId: an explicit ``task_id`` the broker still holds (nothing of the batch is sent).
        """
        limit = self.settings.max_message_size
        secret = self.settings.secret
        envelopes = []
        for m in messages:  # encode everything before sending anything
            body = encode(m, limit)
            envelopes.append(
                Envelope(
                    m.id,
                    m.queue,
                    body if secret is None else sign(body, secret),
                    m.priority,
                    m.eta,
                    m.key,
                    m.explicit_id,
                )
            )
        return self.broker.enqueue(envelopes)

    def result(self, task_id: str) -> AsyncResult[Any]:
        """The result handle of a task id (e.g. one stored by a web request)."""
        return AsyncResult(task_id, self)

    def close(self) -> None:
        """Close broker and backend connections (they reopen if used again)."""
        if self._broker is not None:
            self._broker.close()
        if self._backend is not None:
            self._backend.close()


def _is_coroutine_function(fn: Callable[..., Any]) -> bool:
    import inspect

    return inspect.iscoroutinefunction(fn)
