"""Task: a function registered on an app, callable inline and sendable to workers.

``Task[P, R]`` keeps the function's signature: ``delay(*args, **kwargs)`` is checked against it
by the type checker and returns ``AsyncResult[R]``. Options are validated when the task is
declared, so ``@app.task(retires=3)`` fails at import time naming the options that exist and the
feature (middleware) that owns each; :class:`TaskOptionsDict` gives mypy the same check.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import inspect
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypedDict, TypeVar, Unpack, overload

from conveyor.arguments import check_arguments
from conveyor.errors import ConfigurationError
from conveyor.flowcontrol import check_concurrency, parse_rate
from conveyor.message import MAX_PRIORITY, MIN_PRIORITY, Message, new_id, now
from conveyor.message import SendOptions as SendOptions  # re-exported: it lives beside the message it fills
from conveyor.result import AsyncResult
from conveyor.retries import RetryPolicy
from conveyor.typed import TaskTypes, types_of
from conveyor.workflows.signature import Signature, attach_callbacks

if TYPE_CHECKING:
    from conveyor.app import App

P = ParamSpec("P")
P2 = ParamSpec("P2")
R = TypeVar("R")
T = TypeVar("T")


#: The options the task itself owns (where and how it is sent); every other option belongs to a middleware.
TASK_OWNED = frozenset({"name", "queue", "priority"})


class TaskOptionsDict(TypedDict, total=False):
    """The keyword arguments of ``@app.task(...)`` that mypy knows: see :class:`TaskOptions`.

    A user middleware's own options are checked at run time only (mypy cannot know them).
    """

    name: str | None
    queue: str | None
    priority: int
    retries: int
    backoff: float
    backoff_max: float
    retry_on: type[BaseException] | tuple[type[BaseException], ...]
    time_limit: float | None
    soft_time_limit: float | None
    ignore_result: bool
    expires: float | datetime.timedelta | None
    dead_letter_on_failure: bool
    rate_limit: str | float | None
    concurrency_key: Callable[..., Any] | None
    max_concurrency: int | None


@dataclasses.dataclass(frozen=True, slots=True)
class TaskOptions:
    """Options of one task, given as keyword arguments to ``@app.task(...)``.

    Each belongs to the task (``name``, ``queue``, ``priority``) or to the middleware that
    implements it (the owner is named in brackets); ``App.option_owners()`` lists them.

    Attributes:
        name: registered name; defaults to ``module.qualname`` of the function.
        queue: queue the task goes to; defaults to the app's routing table (``App(routes=...)``), then
            its ``default_queue``.
        priority: 0-9, higher runs first.
        retries: retries after a failed first attempt (Retries).
        backoff: base retry delay in seconds, exponential, full jitter (Retries).
        backoff_max: cap on the retry delay in seconds (Retries).
        retry_on: exception types that are retried; others fail at once (Retries).
        time_limit: hard limit in seconds: the process running the task is replaced and the task
            fails with TimeLimitExceeded (TimeLimits; enforced by the supervisor).
        soft_time_limit: seconds after which TimeLimitExceeded is raised inside the task (TimeLimits).
        ignore_result: store no result (and no STARTED state) for this task (Results).
        expires: seconds (or a ``timedelta``) after enqueue after which the task is not run, recorded
            REVOKED (Revocation).
        dead_letter_on_failure: put the message in the dead-letter queue when it finally fails (DeadLetters).
        rate_limit: at most this many runs across all workers: ``"100/s"``, ``"100/m"``, ``"5/h"`` or a
            number a second; a limited run waits in the broker, not in a worker slot (FlowControl).
        concurrency_key: a function of the task's arguments giving a key; with ``max_concurrency``, at
            most that many runs of one key at once, across all workers (FlowControl).
        max_concurrency: runs of one ``concurrency_key`` allowed at once (FlowControl).
        extra: the options of the user's own middleware, by name (read them in its hooks as
            ``job.options.extra``).
    """

    name: str | None = None
    queue: str | None = None
    priority: int = 0
    retries: int = 0
    backoff: float = 1.0
    backoff_max: float = 600.0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    time_limit: float | None = None
    soft_time_limit: float | None = None
    ignore_result: bool = False
    expires: float | None = None
    dead_letter_on_failure: bool = False
    rate_limit: str | float | None = None
    concurrency_key: Callable[..., Any] | None = None
    max_concurrency: int | None = None
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        check_priority(self.priority)
        if self.expires is not None:  # a timedelta becomes seconds, as a call's expires= does
            object.__setattr__(self, "expires", seconds(self.expires, "expires"))
        if self.retries < 0:
            raise ConfigurationError(f"retries must be >= 0, got {self.retries}")
        for field in ("backoff", "backoff_max", "time_limit", "soft_time_limit", "expires"):
            value = getattr(self, field)
            if value is not None and value <= 0:
                raise ConfigurationError(f"{field} must be positive seconds, got {value}")
        if isinstance(self.retry_on, type):
            object.__setattr__(self, "retry_on", (self.retry_on,))
        if not all(isinstance(t, type) and issubclass(t, BaseException) for t in self.retry_on):
            raise ConfigurationError(f"retry_on must be exception types, got {self.retry_on!r}")
        if self.rate_limit is not None:
            parse_rate(self.rate_limit)
        check_concurrency(self.concurrency_key, self.max_concurrency)

    @classmethod
    def build(cls, options: Mapping[str, Any], owners: Mapping[str, str]) -> TaskOptions:
        """Validate keyword options against ``owners`` (option -> what owns it), naming them when one is unknown."""
        unknown = sorted(set(options) - set(owners))
        if unknown:
            by_owner: dict[str, list[str]] = {}
            for option, owner in owners.items():
                by_owner.setdefault(owner, []).append(option)
            known = "; ".join(f"{', '.join(names)} ({owner})" for owner, names in by_owner.items())
            raise ConfigurationError(f"unknown task option(s) {', '.join(unknown)}; known: {known}")
        fields = _FIELDS & options.keys()
        extra = {k: v for k, v in options.items() if k not in _FIELDS}
        return cls(**{k: options[k] for k in fields}, extra=extra)

    @property
    def retry_policy(self) -> RetryPolicy:
        """The retry settings as a pure policy object."""
        return RetryPolicy(self.retries, self.backoff, self.backoff_max, self.retry_on)


_FIELDS = frozenset(f.name for f in dataclasses.fields(TaskOptions)) - {"extra"}


def check_priority(priority: int) -> None:
    """Reject priorities outside 0-9 with a clear error."""
    if not isinstance(priority, int) or not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise ConfigurationError(f"priority must be an int from {MIN_PRIORITY} to {MAX_PRIORITY}, got {priority!r}")


#: A "seconds from now" this large is surely a Unix timestamp (31 years ahead): refused, not obeyed.
_LOOKS_LIKE_TIMESTAMP = 1e9


def moment(value: float | datetime.timedelta | datetime.datetime | None, what: str, now: float) -> float | None:
    """The Unix time a ``countdown``/``eta``/``expires`` call option names, or None.

    A number (or a ``timedelta``) is seconds from ``now``, as in Celery, for every option alike; an
    aware ``datetime`` is that moment. A naive ``datetime`` is ambiguous, and a number of seconds
    past 10**9 is an old Unix-timestamp habit (it would mean 31 years from now): both are refused.

    Raises:
        ConfigurationError: a naive datetime, a timestamp-sized number, or another type.
    """
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            raise ConfigurationError(
                f"{what} must be timezone-aware (naive datetimes are ambiguous): "
                f"e.g. datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=30), got {value!r}"
            )
        return value.timestamp()
    return now + seconds(value, what)


def seconds(value: float | datetime.timedelta, what: str) -> float:
    """A duration given as a number of seconds or a ``timedelta``, in seconds.

    Raises:
        ConfigurationError: not a number or a timedelta, or a number that looks like a Unix timestamp.
    """
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(
            f"{what} must be seconds from now (a number or a datetime.timedelta) or an aware datetime, got {value!r}"
        )
    if value >= _LOOKS_LIKE_TIMESTAMP:
        raise ConfigurationError(
            f"{what}={value!r} looks like a Unix timestamp, but numbers are seconds from now (as in Celery); "
            "pass an aware datetime for a moment, e.g. datetime.datetime.fromtimestamp(ts, datetime.UTC)"
        )
    return float(value)


#: The option names :meth:`BaseTask.message` accepts, computed once rather than per call.
_SEND_OPTIONS = frozenset(SendOptions.__annotations__)


class BaseTask(Generic[P, R]):
    """What every task can do besides being called: be sent to a worker."""

    def __init__(self, app: App, fn: Callable[..., Any], options: TaskOptions) -> None:
        self.app = app
        self.fn = fn
        self.options = options
        self.name = options.name or f"{fn.__module__}.{fn.__qualname__}"
        self.is_async = inspect.iscoroutinefunction(fn)
        self.retry_policy = options.retry_policy
        # Resolved once: the app's settings and routes are fixed, so the queue cannot change under us.
        self._queue = options.queue or app.routes.queue_for(self.name) or app.settings.default_queue
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<task {self.name}>"

    @functools.cached_property
    def types(self) -> TaskTypes:
        """What the function's annotations ask arguments and results to arrive as (``conveyor.typed``).

        Worked out on first use (a forward reference resolves by then) and kept; a worker warms it at start.
        """
        return types_of(self.name, self.fn)

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Send the task to a worker with these arguments; returns at once with its result handle.

        Raises:
            TypeError: a missing or unexpected argument, as calling the function would raise; nothing is sent.
            EncodeError: an argument does not serialize, or would not arrive as the value sent
                (it does not convert into its parameter's annotation); the error names it.
            BrokerUnavailable: the broker did not answer.
        """
        return self.apply_async(args, kwargs)

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """:meth:`delay` for a coroutine: ``r = await task.adelay(...)`` in an async web handler.

        Raises:
            TypeError: a missing or unexpected argument; nothing is sent.
            EncodeError: an argument does not serialize (the error names it).
            BrokerUnavailable: the broker did not answer; nothing is sent.
        """
        # aapply_async's body, inline, and app.asend's (app._asend is no coroutine): on Redis this coroutine
        # and the broker's are the only ones to enter and resume per call (issue 15).
        self.check_call(args, kwargs)
        [task_id] = await self.app._asend([self.message(args, kwargs)])
        return AsyncResult(task_id, self.app)

    @overload
    def s(self, *args: P.args, **kwargs: P.kwargs) -> Signature[R]: ...
    @overload
    def s(self: BaseTask[Concatenate[T, P2], R], *args: P2.args, **kwargs: P2.kwargs) -> Signature[R]: ...

    def s(self, *args: Any, **kwargs: Any) -> Signature[R]:
        """This task's call with these arguments, written down to send later (a periodic entry, a chain).

        In a chain (or as a ``link=`` callback) the call gets its predecessor's result as first
        argument, before these: ``chain(fetch.s(url), parse.s())`` calls ``parse(page)``. The type
        checker accepts every argument (as ``delay`` does) or every one but the first (the one a
        predecessor fills), each checked against the function's signature.
        """
        return Signature(self.name, tuple(args), dict(kwargs), app=self.app)

    @overload
    def si(self, *args: P.args, **kwargs: P.kwargs) -> Signature[R]: ...
    @overload
    def si(self: BaseTask[Concatenate[T, P2], R], *args: P2.args, **kwargs: P2.kwargs) -> Signature[R]: ...

    def si(self, *args: Any, **kwargs: Any) -> Signature[R]:
        """Like :meth:`s`, but immutable: in a chain or a callback it ignores its predecessor's result."""
        return Signature(self.name, tuple(args), dict(kwargs), immutable=True, app=self.app)

    def apply_async(
        self,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        connection: object | None = None,
        **options: Unpack[SendOptions],
    ) -> AsyncResult[R]:
        """Send the task with options for this call (see :class:`SendOptions`).

        Args:
            connection: PostgreSQL broker only: the caller's open psycopg connection (or SQLAlchemy Session or
                Connection on ``postgresql+psycopg``); the task is written inside the caller's transaction, so
                it exists once that transaction commits and never if it rolls back (see docs/postgres.md).

        Raises:
            TypeError: a missing or unexpected argument, as calling the function would raise; nothing is sent.
            EncodeError: an argument would not arrive as the value sent (see :mod:`conveyor.typed`).
            ConfigurationError: ``connection=`` with a broker that is not PostgreSQL, or no psycopg connection.
        """
        self.check_call(args, kwargs)  # fails here, not in the worker (not on the batch path)
        [task_id] = self.app.send([self.message(args, kwargs, **options)], connection=connection)
        return AsyncResult(task_id, self.app)

    def check_call(self, args: Sequence[Any], kwargs: Mapping[str, Any] | None) -> None:
        """Raise now for a call that would fail in the worker: arguments that do not bind, or that would
        not arrive as sent (their parameters' annotations, :mod:`conveyor.typed`).

        Raises:
            TypeError: a missing or unexpected argument, as calling the function would raise.
            EncodeError: an argument would not arrive as the value sent; the error names it.
        """
        check_arguments(self.name, self.fn, args, kwargs)
        types = self.types
        if types.typed:  # only parameters JSON does not carry as they are (a datetime, a set...)
            types.check(args, kwargs)

    async def aapply_async(
        self,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        connection: object | None = None,
        **options: Unpack[SendOptions],
    ) -> AsyncResult[R]:
        """:meth:`apply_async` for a coroutine; the same options and errors.

        Args:
            connection: PostgreSQL broker only: the caller's open psycopg ``AsyncConnection``; the task is
                written inside the caller's transaction (exists once it commits, never if it rolls back).

        Raises:
            TypeError: a missing or unexpected argument, as calling the function would raise; nothing is sent.
            ConfigurationError: ``connection=`` with a broker that is not PostgreSQL, or no psycopg AsyncConnection.
        """
        self.check_call(args, kwargs)
        [task_id] = await self.app.asend([self.message(args, kwargs, **options)], connection=connection)
        return AsyncResult(task_id, self.app)

    def message(
        self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None, **options: Unpack[SendOptions]
    ) -> Message:
        """Build (without sending) the message a call with these arguments and options would send.

        Raises:
            ConfigurationError: an unknown option name, a bad priority or a naive datetime.
        """
        created = now()
        if not options:  # delay(): nothing to validate or convert, and it is the hot path (issue 6)
            return Message(
                id=new_id(),
                task=self.name,
                args=list(args),
                kwargs=dict(kwargs) if kwargs else {},
                queue=self._queue,
                priority=self.options.priority,
                expires=None if self.options.expires is None else created + self.options.expires,
                max_retries=self.options.retries,
                created=created,
            )
        unknown = sorted(options.keys() - _SEND_OPTIONS)
        if unknown:
            known = ", ".join(SendOptions.__annotations__)
            raise ConfigurationError(f"unknown option(s) {', '.join(unknown)} for task {self.name!r}; known: {known}")
        when = moment(options.get("eta"), "eta", created)
        countdown = options.get("countdown")
        if countdown is not None:
            if when is not None:
                raise ConfigurationError("give countdown or eta, not both")
            when = created + seconds(countdown, "countdown")
        until = moment(options.get("expires"), "expires", created)
        if until is None and self.options.expires is not None:
            until = created + self.options.expires
        priority = options.get("priority")
        if priority is not None:
            check_priority(priority)
        message = Message(
            id=options.get("task_id") or new_id(),
            explicit_id=bool(options.get("task_id")),
            task=self.name,
            args=list(args),
            kwargs=dict(kwargs or {}),
            queue=options.get("queue") or self._queue,
            priority=self.options.priority if priority is None else priority,
            eta=when,
            expires=until,
            max_retries=self.options.retries,
            key=options.get("key"),
            created=created,
            headers=dict(options.get("headers") or {}),
        )
        if options.get("link") or options.get("link_error"):
            attach_callbacks(message, options.get("link"), options.get("link_error"))
        return message


class Task(BaseTask[P, R]):
    """A task whose function is synchronous; calling it runs the function here and now."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        result: R = self.fn(*args, **kwargs)
        return result


class AsyncTask(BaseTask[P, R]):
    """A task whose function is ``async def``; workers run it on their event loop."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
        coro: Coroutine[Any, Any, R] = self.fn(*args, **kwargs)
        return coro
