"""App: the one object users build. It owns the settings, the task registry, the broker and the
result backend, and sends messages.

::

    app = App("shop")                                     # sqlite:///conveyor.db for both
    app = App("shop", broker="redis://localhost:6379/0")  # results on the same Redis

The broker and backend connect lazily on first use, so importing a module that builds an app
opens nothing, and a worker process forked from it opens its own connections.

Middleware (``middleware.py``): the built-in features (:func:`builtin_middleware`) come first,
then the user's, from ``App(middleware=[...])`` and :meth:`App.add_middleware`, in that order.
:meth:`App.finalize` resolves them into the hook chain once; a worker finalizes the app when it
starts, and no middleware can be added after that.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar, Unpack, overload

from conveyor.backends import ResultBackend
from conveyor.backends import check_url as check_backend_url
from conveyor.backends import from_url as backend_from_url
from conveyor.brokers import Broker, Envelope
from conveyor.brokers import check_url as check_broker_url
from conveyor.brokers import from_url as broker_from_url
from conveyor.codec import codec_for
from conveyor.errors import ConfigurationError, ResultMissing, TaskNotRegistered
from conveyor.logging import LoggingSetup
from conveyor.message import Message
from conveyor.middleware import HookChain, Middleware, send_hooks
from conveyor.result import AsyncResult
from conveyor.routing import Routes
from conveyor.scheduler.entries import Entry, PeriodicOptions, build_entry
from conveyor.settings import Settings, SettingsDict, redact_url
from conveyor.task import TASK_OWNED, AsyncTask, BaseTask, Task, TaskOptions, TaskOptionsDict
from conveyor.workflows.signature import Signature

if TYPE_CHECKING:
    from conveyor.codec import Codec
    from conveyor.workflows.canvas import Canvas
    from conveyor.workflows.groupresult import GroupResult

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
        name: a short name, shown in logs, the worker's banner and ``conveyor status``.
        broker: broker URL; defaults to ``sqlite:///conveyor.db`` (``CONVEYOR_BROKER_URL`` overrides).
        backend: result backend URL; defaults to the broker's (``CONVEYOR_BACKEND_URL`` overrides).
        middleware: the user's middleware, run after the built-in ones in this order (see
            :meth:`add_middleware`).
        log_config: a :func:`logging.config.dictConfig` dict that worker and beat processes apply
            instead of conveyor's own logging set-up (docs/logging.md); see also :meth:`on_setup_logging`.
        routes: task name (or ``fnmatch`` pattern) -> queue, e.g. ``{"shop.mail.*": "mail"}``; a
            task's own ``queue=`` and a call's ``queue=`` win over it (see ``conveyor.routing``).
        include: modules that declare tasks, imported when the app is finalized (a worker starts),
            e.g. ``["shop.billing"]``: a task the worker never imported is unknown to it.
        autodiscover: packages whose ``tasks`` modules (``shop.tasks``, ``shop.billing.tasks``) are
            imported when the app is finalized; see :mod:`conveyor.discovery`.
        **settings: any other field of :class:`~conveyor.settings.Settings`, typed for mypy by
            :class:`~conveyor.settings.SettingsDict` (``App("x", lease="30")`` is a type error).

    Every setting is checked here, when the app is built: its type, its value, the shape of the
    URLs (``redis://host/abc`` is refused), the result backend's scheme. A relative SQLite path
    (the default ``sqlite:///conveyor.db``) is made absolute against the current directory, once.

    Raises:
        ConfigurationError: an unknown setting, a value of the wrong type, or a bad value.
    """

    def __init__(
        self,
        name: str,
        *,
        broker: str | None = None,
        backend: str | None = None,
        middleware: Iterable[Middleware] = (),
        log_config: dict[str, Any] | None = None,
        routes: Mapping[str, str] | None = None,
        include: Iterable[str] = (),
        autodiscover: Iterable[str] = (),
        **settings: Unpack[SettingsDict],
    ) -> None:
        if broker is not None:
            settings["broker_url"] = broker
        if backend is not None:
            settings["backend_url"] = backend
        self.name = name
        for what, names in (("include", include), ("autodiscover", autodiscover)):
            if isinstance(names, str) or not all(isinstance(n, str) and n for n in names):
                raise ConfigurationError(f"{what} must be a list of module names, got {names!r}")
        #: Modules imported when the app is finalized (``include``), and packages searched (``autodiscover``).
        self.include, self.autodiscover = tuple(include), tuple(autodiscover)
        self._loaded = False
        self.settings = Settings.build(settings).with_absolute_paths(Path.cwd())
        check_broker_url(self.settings.broker_url)  # kafka://: an error now, not at the first delay()
        #: The routing table: which queue a task without its own ``queue=`` goes to.
        self.routes = Routes(routes)
        check_backend_url(self.settings.result_url)  # e.g. amqp:// without backend=: an error now, not at first use
        #: Encodes (and signs, with a ``secret``) every message body this app sends or reads.
        self.codec: Codec = codec_for(self.settings.secret)
        if log_config is not None and not isinstance(log_config, dict):
            raise ConfigurationError(f"log_config must be a logging.config.dictConfig dict, got {log_config!r}")
        #: The dictConfig dict worker and beat apply instead of conveyor's logging set-up (or None).
        self.log_config = log_config
        #: The function worker and beat call, with the level name, instead of conveyor's logging set-up.
        self.logging_setup: LoggingSetup | None = None
        self.middleware: list[Middleware] = []
        self._chain: HookChain | None = None
        #: The middleware's ``before_send`` hooks (usually none), derived once, not on each send.
        self._send_hooks = send_hooks(self.middleware)
        for m in middleware:
            self.add_middleware(m)
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

    def add_middleware(self, middleware: Middleware) -> None:
        """Add a middleware after the ones the app has (see ``middleware.py`` for the order of hooks).

        Add it before declaring the tasks that use its options: options are checked at decoration.

        Raises:
            ConfigurationError: not a Middleware, an option another middleware owns, or the app is
                finalized already (a worker or ``testing.drain`` started with it).
        """
        if not isinstance(middleware, Middleware):
            raise ConfigurationError(f"middleware must be a conveyor.Middleware instance, got {middleware!r}")
        if self._chain is not None:
            raise ConfigurationError(f"app {self.name!r} is finalized (a worker runs it); add middleware before")
        owners = self.option_owners()
        taken = sorted(option for option in middleware.options if option in owners)
        if taken:
            named = ", ".join(f"{option} ({owners[option]})" for option in taken)
            raise ConfigurationError(f"{type(middleware).__name__} declares task option(s) owned already: {named}")
        self.middleware.append(middleware)
        self._send_hooks = send_hooks(self.middleware)

    def on_setup_logging(self, fn: LoggingSetup) -> LoggingSetup:
        """Decorator: ``fn(level)`` sets up logging in worker and beat processes instead of conveyor.

        ``level`` is the level name from ``--loglevel`` or the ``log_level`` setting (``"INFO"``...).
        Records still carry ``task_name`` and ``task_id`` and warnings still go through logging
        (docs/logging.md). For a plain :func:`logging.config.dictConfig`, ``App(log_config=...)`` is shorter.

        Raises:
            ConfigurationError: the app has a ``log_config`` or another ``on_setup_logging`` function.
        """
        if self.log_config is not None or self.logging_setup is not None:
            raise ConfigurationError(
                f"app {self.name!r} has a logging set-up already (log_config= or @app.on_setup_logging): keep one"
            )
        self.logging_setup = fn
        return fn

    def load_tasks(self) -> dict[str, BaseTask[Any, Any]]:
        """Import the ``include`` modules and ``autodiscover`` packages (once); return the registered tasks.

        Raises:
            ConfigurationError: a module or package that does not import.
        """
        if not self._loaded:
            from conveyor.discovery import import_modules

            import_modules(self.include, self.autodiscover)
            self._loaded = True
        return dict(sorted(self.tasks.items()))

    def finalize(self) -> HookChain:
        """Load the tasks (:meth:`load_tasks`), then build the hook chain of the built-in and the user's middleware.

        Built once; later calls return it.
        """
        self.load_tasks()  # outside the lock: a user's module may use the app (its broker takes the lock)
        if self._chain is None:
            with self._lock:
                if self._chain is None:
                    self._chain = HookChain([*builtin_middleware(self), *self.middleware])
        return self._chain

    def option_owners(self) -> dict[str, str]:
        """Every ``@app.task`` option, with what owns it: the task itself, or a middleware's class name."""
        owners = dict.fromkeys(sorted(TASK_OWNED), "Task")
        for cls in [*_builtin_types(), *(type(m) for m in self.middleware)]:
            owners.update(dict.fromkeys(sorted(cls.options), cls.__name__))
        return owners

    @overload
    def task(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> AsyncTask[P, R]: ...  # type: ignore[overload-overlap]
    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...
    @overload
    def task(self, /, **options: Unpack[TaskOptionsDict]) -> TaskDecorator: ...

    def task(self, fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
        """Register a function as a task; use bare (``@app.task``) or with options (``@app.task(retries=3)``).

        Options: see :class:`~conveyor.task.TaskOptions`, plus those of the app's own middleware.

        Raises:
            ConfigurationError: an unknown option (the error lists the options and the feature that
                owns each), a bad value, or a name already registered.
        """
        parsed = TaskOptions.build(options, self.option_owners())

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

    def send(self, messages: Sequence[Message], *, connection: object | None = None) -> list[str]:
        """Encode and enqueue messages in one batch; return the id each task lives under.

        ``connection``: write them with the caller's own database connection, inside its open transaction
        (PostgreSQL broker only; see :meth:`Broker.enqueue_in <conveyor.brokers.base.Broker.enqueue_in>`).

        Raises:
            EncodeError: an argument does not serialize (nothing of the batch is sent).
            MessageTooLarge: a message is over ``max_message_size``.
            BrokerUnavailable: the broker did not answer.
            DuplicateTaskId: an explicit ``task_id`` the broker still holds (nothing of the batch is sent).
        """
        envelopes = self._envelopes(messages)
        if connection is not None:
            return self.broker.enqueue_in(connection, envelopes)
        return self.broker.enqueue(envelopes)

    async def asend(self, messages: Sequence[Message], *, connection: object | None = None) -> list[str]:
        """:meth:`send` for a coroutine (a FastAPI handler): the event loop runs on while the broker answers.

        On Redis the message goes out on the loop's own connection; SQLite and RabbitMQ enqueue in a
        thread. Cancelling the call never leaves a batch half-sent: it is stored whole or not at all.
        ``connection``: the caller's psycopg ``AsyncConnection``, to write them inside its open transaction
        (PostgreSQL broker only; see :meth:`Broker.aenqueue_in <conveyor.brokers.base.Broker.aenqueue_in>`).

        Raises:
            EncodeError: an argument does not serialize (nothing of the batch is sent).
            MessageTooLarge: a message is over ``max_message_size``.
            BrokerUnavailable: the broker did not answer.
            DuplicateTaskId: an explicit ``task_id`` the broker still holds (nothing of the batch is sent).
        """
        if connection is not None:
            return await self.broker.aenqueue_in(connection, self._envelopes(messages))
        return await self._asend(messages)

    def _asend(self, messages: Sequence[Message]) -> Coroutine[Any, Any, list[str]]:
        """:meth:`asend` without a connection and without a coroutine of its own: ``adelay``'s hot path.

        The messages are encoded now (an EncodeError is raised here, before anything is sent); the
        broker's coroutine that enqueues them is returned, for the caller to await at once.
        """
        return self.broker.aenqueue(self._envelopes(messages))

    def _envelopes(self, messages: Sequence[Message]) -> list[Envelope]:
        """Encode every message (before anything is sent: one bad argument sends nothing)."""
        for hook in self._send_hooks:  # the middleware's producer side (trace context in the headers, say)
            for message in messages:
                hook(message)
        limit = self.settings.max_message_size
        encode = self.codec.encode
        return [Envelope(m.id, m.queue, encode(m, limit), m.priority, m.eta, m.key, m.explicit_id) for m in messages]

    def migrate(self) -> list[str]:
        """Create or upgrade the schemas of the broker and the result backend (``conveyor db migrate``).

        Returns:
            One line per step taken or schema found up to date; empty when neither engine has a
            versioned schema (memory, SQLite, Redis and RabbitMQ create what they need themselves).

        Raises:
            BrokerUnavailable: a server did not answer.
        """
        lines = self.broker.migrate()
        if self.settings.result_url != self.settings.broker_url:  # the same schema is migrated once
            lines += self.backend.migrate()
        return lines

    @overload
    def result(self, task_id: str) -> AsyncResult[object]: ...
    @overload
    def result(self, task_id: str, task: BaseTask[Any, R]) -> AsyncResult[R]: ...

    def result(self, task_id: str, task: BaseTask[Any, Any] | None = None) -> AsyncResult[Any]:
        """The result handle of a task id stored earlier (by a web request, say), without importing ``AsyncResult``.

        Name the task to type the handle: ``app.result(id, send_receipt).get()`` is a ``str`` to mypy
        for ``def send_receipt(...) -> str``; without it, ``get()`` is an ``object``.

        Raises:
            ConfigurationError: ``task`` is not a task of this app.
        """
        if task is not None and self.tasks.get(task.name) is not task:
            raise ConfigurationError(f"{task!r} is not a task of app {self.name!r}")
        return AsyncResult(task_id, self)

    def send_workflow(self, piece: Canvas[Any]) -> Any:
        """Send a signature, chain, group or chord (what their ``apply_async`` does); return its result handle."""
        from conveyor.workflows.plan import send  # the workflows package imports task, which this module imports

        return send(self, piece)

    async def asend_workflow(self, piece: Canvas[Any]) -> Any:
        """:meth:`send_workflow` for a coroutine (what their ``aapply_async`` does)."""
        from conveyor.workflows.plan import asend

        return await asend(self, piece)

    def group_result(self, group_id: str) -> GroupResult[Any]:
        """The GroupResult of a group sent earlier (its membership is kept for ``result_ttl``).

        Raises:
            ResultMissing: no group of that id is known (never sent, or expired).
        """
        from conveyor.workflows.groupresult import restore_group

        found = restore_group(self, group_id)
        if found is None:
            raise ResultMissing(f"no group {group_id!r} in the result backend (never sent, or older than result_ttl)")
        return found

    def close(self) -> None:
        """Close broker and backend connections (they reopen if used again)."""
        if self._broker is not None:
            self._broker.close()
        if self._backend is not None:
            self._backend.close()

    async def aclose(self) -> None:
        """Close the running event loop's connections (call it before the loop ends, e.g. in a lifespan)."""
        if self._broker is not None:
            await self._broker.aclose()
        if self._backend is not None:
            await self._backend.aclose()


def _builtin_types() -> tuple[type[Middleware], ...]:
    """The built-in middleware classes, in chain order (imported late: they import the worker package)."""
    from conveyor.deadletters import DeadLetters
    from conveyor.flowcontrol import FlowControl
    from conveyor.results import Results
    from conveyor.retries import Retries
    from conveyor.revocation import Revocation
    from conveyor.worker.timelimits import TimeLimits
    from conveyor.workflows.middleware import Workflows

    return (Revocation, Workflows, FlowControl, Results, DeadLetters, Retries, TimeLimits)


def builtin_middleware(app: App) -> list[Middleware]:
    """The built-in features, in chain order.

    - Revocation: skip an expired task, or a redelivered one that was revoked (``expires``);
    - Workflows: send what follows a task of a chain, group or chord; fail it when the task fails
      (its ``after_success`` runs after Results checked the value, its ``after_failure`` only when
      no retry and no dead letter was asked);
    - FlowControl: global rate limits and per-key concurrency (``rate_limit``, ``concurrency_key``,
      ``max_concurrency``); a limited task is given back to run later, before anything is recorded;
    - Results: record STARTED, progress and SUCCESS (``ignore_result``);
    - DeadLetters: dead-letter a task that failed for good (``dead_letter_on_failure``);
    - Retries: retry a failed task per its policy (``retries``, ``backoff``, ``backoff_max``,
      ``retry_on``); asked before DeadLetters, as after-hooks go last to first;
    - TimeLimits: the soft time limit around the call, innermost of the built-ins
      (``soft_time_limit``, ``time_limit``: the hard one is the supervisor's).
    """
    from conveyor.deadletters import DeadLetters
    from conveyor.flowcontrol import FlowControl
    from conveyor.results import Results
    from conveyor.retries import Retries
    from conveyor.revocation import Revocation
    from conveyor.worker.timelimits import TimeLimits
    from conveyor.workflows.middleware import Workflows

    return [Revocation(app), Workflows(app), FlowControl(app), Results(app), DeadLetters(), Retries(), TimeLimits()]


def _is_coroutine_function(fn: Callable[..., Any]) -> bool:
    import inspect

    return inspect.iscoroutinefunction(fn)
