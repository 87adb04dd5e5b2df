"""Middleware: the named hooks a feature plugs into the worker's per-message path, and the chain.

Every feature of the worker (results, retries, dead letters, expiry and revocation, soft time
limits) is a :class:`Middleware` in its own module, and so is anything a user adds (a DB
session per task, metrics, error reporting). A middleware overrides only the hooks it needs;
:class:`HookChain` is built once, when the app is finalized, and keeps for each hook a tuple of
only the middleware that override it, so a message costs nothing for the hooks nobody uses (no
``getattr`` over every middleware per message, unlike Dramatiq's ``emit_before``). Per task, the
chain then keeps a :class:`Plan`: only the hooks that have something to do for that task
(:meth:`Middleware.wants`, asked once per task and hook) and, for a message that carries none of a
middleware's :attr:`~Middleware.message_fields` (a task outside any workflow), not that middleware's.

Order: the app's built-in middleware come first, then the user's, in the order added.

- ``before_run`` and ``around_call`` go first to last: the first middleware's ``around_call`` is
  the outermost, so a user's DB session sits inside the soft time limit, next to the call.
- ``after_success``, ``after_failure`` and ``after_settle`` go last to first (innermost first,
  as when leaving nested blocks). The first ``after_failure`` that returns a verdict decides,
  and the ones after it are not asked: a user's middleware can overrule Retries, and Retries
  (asked before DeadLetters) retries before the task is dead-lettered.

The path of one task through the hooks is drawn in docs/worker.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import operator
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from conveyor.context import TaskContext, reset_context, set_context
from conveyor.states import State

if TYPE_CHECKING:
    from conveyor.app import App
    from conveyor.brokers import Delivery
    from conveyor.message import Message
    from conveyor.task import BaseTask, TaskOptions
    from conveyor.worker.events import Ended
    from conveyor.worker.settle import Settler

log = logging.getLogger("conveyor.worker")

__all__ = ["Bury", "Defer", "Fail", "HookChain", "Job", "Middleware", "Outcome", "Requeue", "Skip", "Verdict"]


#: ``Executor(on_start=...)``: called with (delivery, message, task) just before a task's call.
OnStart = Callable[["Delivery", "Message", "BaseTask[Any, Any]"], None]


def _no_progress(fraction: float, note: str) -> None:
    """Progress reporter of a job whose middleware record none."""


class Job:
    """One delivery being run: what every hook receives.

    Attributes:
        delivery: the broker's delivery (id, queue, deliveries, lease token).
        message: the decoded message (task name, arguments, attempt, headers).
        task: the registered task it names.
        worker: the name of the worker running it, recorded with its result.
        started: ``time.perf_counter()`` when the worker took the delivery.
        result: the final result to store with the ack (set by the Results middleware on success).
        progress: where ``ctx.progress()`` goes (set by the Results middleware).
        args: the positional arguments the task is called with: the message's, converted into the
            parameters' annotations (``conveyor.typed``) once the executor has looked the task up.
        kwargs: the keyword arguments, likewise.
        settler: records this job's outcome; ``settler.durably(...)`` retries a backend step that
            comes after the task ran until it lands.
        state: a free dict for middleware to keep per-task data between hooks (a timer, a session).
        plan: the hooks this job passes (:meth:`HookChain.plan`), set by the executor; None: every hook.
    """

    # __weakref__: FlowControl renews a concurrency slot only while its job lives (see flowcontrol.py).
    __slots__ = (
        "__weakref__",
        "_state",
        "args",
        "delivery",
        "id",
        "kwargs",
        "message",
        "plan",
        "progress",
        "result",
        "settler",
        "started",
        "task",
        "worker",
    )

    def __init__(
        self, delivery: Delivery, message: Message, task: BaseTask[Any, Any], worker: str, settler: Settler
    ) -> None:
        self.delivery = delivery
        self.message = message
        #: The task id (the message id, the same as ``AsyncResult.id``).
        self.id = message.id
        self.task = task
        self.args: list[Any] = message.args
        self.kwargs: dict[str, Any] = message.kwargs
        self.worker = worker
        self.settler = settler
        self.started = time.perf_counter()
        self.result: tuple[str, State, bytes] | None = None
        self.progress: Callable[[float, str], None] = _no_progress
        self._state: dict[str, Any] | None = None
        self.plan: Plan | None = None

    @property
    def state(self) -> dict[str, Any]:
        """A dict for middleware to keep per-task data between hooks (made on first use)."""
        if self._state is None:
            self._state = {}
        return self._state

    @property
    def options(self) -> TaskOptions:
        """The task's options, as declared with ``@app.task(...)``."""
        return self.task.options

    def elapsed(self) -> float:
        """Seconds since the worker took the delivery."""
        return time.perf_counter() - self.started

    def context(self) -> TaskContext:
        """The running task's view of itself (``current_context()`` inside the task)."""
        message = self.message
        limit = message.max_retries if message.max_retries is not None else self.task.options.retries
        delivery = self.delivery
        return TaskContext(
            message.id,
            message.task,
            message.attempt,
            limit,
            delivery.deliveries,
            delivery.queue,
            message.headers,
            self.progress,
        )

    def __repr__(self) -> str:
        return f"<Job {self.message.task}[{self.message.id}] attempt {self.message.attempt}>"


class Outcome(msgspec.Struct, frozen=True, gc=False):
    """How one delivery ended: what ``after_settle`` hooks and ``testing.drain`` see, reported to the supervisor.

    Immutable like a frozen dataclass; a struct because one is made per task (see ``Delivery``).
    """

    id: str
    task: str
    ended: Ended
    runtime: float
    #: True when the result and ack wait in the settler's pending lists (a BatchSettler).
    deferred: bool = False

    @property
    def state(self) -> Ended:
        """``ended``, under the name ``testing.drain`` callers know."""
        return self.ended


class Skip(Exception):
    """Raised by ``before_run``: do not run the task; record it REVOKED with ``note`` and ack it.

    With ``record=False`` the task's result is left as it is and the message only acked: a redelivered
    copy of a task whose final result is already recorded, or (``revoked=True``) a task revoked after
    it was reserved, whose REVOKED record is the revoker's.
    """

    def __init__(self, note: str, *, record: bool = True, revoked: bool = False) -> None:
        super().__init__(note)
        self.note = note
        self.record = record
        self.revoked = revoked


class Defer(Exception):
    """Raised by ``before_run``: not now; give the message back to run ``delay`` seconds from now.

    Nothing is recorded and no delivery or attempt is counted: the slot is free at once for other
    tasks (a rate-limited task waits in the broker's schedule, not in a worker). ``headers`` are
    added to the message given back (e.g. the rate limit's reserved token, so it is not asked twice).
    """

    def __init__(self, delay: float, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.delay = delay
        self.reason = reason
        self.headers = headers or {}


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with a task that raised, as decided by an ``after_failure`` hook."""


@dataclasses.dataclass(frozen=True, slots=True)
class Fail(Verdict):
    """Record FAILURE and ack: the default when no middleware gives a verdict."""


@dataclasses.dataclass(frozen=True, slots=True)
class Requeue(Verdict):
    """Record RETRY and send the task again for its next attempt, ``delay`` seconds from now.

    Attributes:
        delay: seconds before the next attempt may run.
        reason: why, for the log line.
    """

    delay: float
    reason: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Bury(Verdict):
    """Record FAILURE and move the message to the dead-letter queue with ``reason``."""

    reason: str


class Middleware:
    """Base class of every worker feature; override only the hooks you need.

    A hook that is not overridden costs nothing per message: the chain leaves it out. Hooks run
    in the thread (or, for ``around_acall``, the event loop) that runs the task, so per-task
    data belongs in ``job.state``, not on the middleware. The middleware object itself is
    shared by a child's threads.

    Attributes:
        options: the ``@app.task(...)`` options this middleware owns; an option no middleware
            owns is an error at decoration, naming the options that exist and their owners.
    """

    options: ClassVar[frozenset[str]] = frozenset()
    #: Fields of :class:`~conveyor.message.Message` without which this middleware has nothing to do for a
    #: message: when all of them are empty (None, ``[]``, ``{}``) its task hooks are left out for that message
    #: (Workflows: ``parent_id``, ``links``, ``chord``, ``link_errors``). Empty (the default): every message.
    message_fields: ClassVar[tuple[str, ...]] = ()

    # -- producer side -----------------------------------------------------------------------

    def before_send(self, message: Message) -> None:
        """Called by ``App.send`` (so by ``delay`` and ``apply_async``) for each message before it is encoded,
        in the producer's process: add ``message.headers`` (trace context, a request id). Not a worker hook."""

    # -- worker lifecycle ------------------------------------------------------------------

    def on_worker_start(self, app: App) -> None:
        """The worker's supervisor starts, before its children (not in children: see on_child_start)."""

    def on_worker_stop(self, app: App) -> None:
        """The worker's supervisor stops, after its children ended."""

    def on_child_start(self, app: App) -> None:
        """A process that runs tasks starts (a pool child, or ``testing.drain``): open per-process resources."""

    def on_child_stop(self, app: App) -> None:
        """That process stops taking tasks: close what ``on_child_start`` opened."""

    # -- one task ------------------------------------------------------------------------------

    def before_run(self, job: Job) -> None:
        """Before the task runs. Raise :class:`Skip` to not run it (recorded REVOKED), :class:`Defer` to run it later.

        A ``BrokerError`` raised here means nothing ran: the delivery goes back uncounted and
        the worker pauses until the result backend answers. Any other exception fails the task.
        """

    def wants(self, task: BaseTask[Any, Any], hook: str) -> bool:
        """Whether task hook ``hook`` (``"before_run"``, ``"after_success"``...) has anything to do for ``task``.

        Asked once per task and hook when the task's first message arrives, never per message: say no
        for a task that uses none of this middleware's options (FlowControl: no ``rate_limit`` and no
        ``concurrency_key``), and that task pays nothing for the hook. The answer may depend only on
        the task (its options), not on a message.
        """
        return True

    def wraps(self, task: BaseTask[Any, Any]) -> bool:
        """Whether ``around_call``/``around_acall`` wrap ``task``'s calls; asked once per task for sync calls.

        Say no for tasks that need nothing (TimeLimits: a task without a soft limit): they then pay
        nothing for this middleware's context.
        """
        return True

    def around_call(self, job: Job) -> AbstractContextManager[None]:
        """A context manager entered around the call of a synchronous task (and, unless
        :meth:`around_acall` is overridden too, around the await of an async one)."""
        return contextlib.nullcontext()

    def around_acall(self, job: Job) -> AbstractAsyncContextManager[None]:
        """An async context manager entered, on the task's event loop, around the await of an async task."""
        return contextlib.nullcontext()

    def after_success(self, job: Job, value: Any) -> None:
        """The task returned ``value``. Raising here fails the task (the verdict hooks decide what next)."""

    def after_failure(self, job: Job, exc: Exception) -> Verdict | None:
        """The task raised ``exc``: return a verdict (:class:`Requeue`, :class:`Bury`, :class:`Fail`), or None
        to let the next middleware decide (and FAILURE if none does)."""
        return None

    def after_settle(self, job: Job, outcome: Outcome) -> None:
        """The outcome was handed to the settler (written now, or pending for the pool's batch).

        Runs for every task that was looked up, however it ended; an exception here is logged, not raised.
        """


#: The hooks a chain resolves, in the order documented above.
HOOKS = (
    "on_worker_start",
    "on_worker_stop",
    "on_child_start",
    "on_child_stop",
    "before_run",
    "around_call",
    "around_acall",
    "after_success",
    "after_failure",
    "after_settle",
)
#: The hooks of one task, resolved per task into a :class:`Plan`.
_TASK_HOOKS = ("before_run", "around_call", "after_success", "after_failure", "after_settle")
#: Hooks that run last to first.
_REVERSED = frozenset({"on_worker_stop", "on_child_stop", "after_success", "after_failure", "after_settle"})


def _overrides(middleware: Middleware, hook: str) -> bool:
    return getattr(type(middleware), hook) is not getattr(Middleware, hook)


def send_hooks(middleware: Sequence[Middleware]) -> tuple[Callable[[Message], None], ...]:
    """The ``before_send`` hooks of the middleware that override it, in order (a producer's side of the chain:
    it is not finalized, so the app keeps this tuple itself and rebuilds it when middleware is added)."""
    return tuple(m.before_send for m in middleware if _overrides(m, "before_send"))


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """The task hooks one kind of message of one task passes, in call order (see :meth:`HookChain.plan`)."""

    before_run: tuple[Callable[[Job], None], ...]
    after_success: tuple[Callable[[Job, Any], None], ...]
    after_failure: tuple[Callable[[Job, Exception], Verdict | None], ...]
    after_settle: tuple[Callable[[Job, Outcome], None], ...]
    #: The one context to enter around the task's sync call: none, one hook's, or every hook's nested.
    context: Callable[[Job], AbstractContextManager[None]] | None


class HookChain:
    """For each hook, the bound methods of only the middleware that override it, in call order.

    Built once by ``App.finalize()``; the executor iterates these tuples per message.
    """

    def __init__(self, middleware: Sequence[Middleware]) -> None:
        self.middleware = tuple(middleware)
        ordered = {hook: [m for m in self.middleware if _overrides(m, hook)] for hook in HOOKS}
        for hook in _REVERSED:
            ordered[hook].reverse()
        self.on_worker_start: tuple[Callable[[App], None], ...] = tuple(
            m.on_worker_start for m in ordered["on_worker_start"]
        )
        self.on_worker_stop: tuple[Callable[[App], None], ...] = tuple(
            m.on_worker_stop for m in ordered["on_worker_stop"]
        )
        self.on_child_start: tuple[Callable[[App], None], ...] = tuple(
            m.on_child_start for m in ordered["on_child_start"]
        )
        self.on_child_stop: tuple[Callable[[App], None], ...] = tuple(m.on_child_stop for m in ordered["on_child_stop"])
        self.before_run: tuple[Callable[[Job], None], ...] = tuple(m.before_run for m in ordered["before_run"])
        self.after_success: tuple[Callable[[Job, Any], None], ...] = tuple(
            m.after_success for m in ordered["after_success"]
        )
        self.after_failure: tuple[Callable[[Job, Exception], Verdict | None], ...] = tuple(
            m.after_failure for m in ordered["after_failure"]
        )
        self.after_settle: tuple[Callable[[Job, Outcome], None], ...] = tuple(
            m.after_settle for m in ordered["after_settle"]
        )
        self.around_call: tuple[Callable[[Job], AbstractContextManager[None]], ...] = tuple(
            m.around_call for m in ordered["around_call"]
        )
        # An async call is wrapped by each middleware's around_acall, or else by its around_call.
        wraps = [m for m in self.middleware if _overrides(m, "around_call") or _overrides(m, "around_acall")]
        self.around_acall: tuple[Callable[[Job], AbstractContextManager[None] | AbstractAsyncContextManager[None]], ...]
        self.around_acall = tuple(m.around_acall if _overrides(m, "around_acall") else m.around_call for m in wraps)
        self._ordered = {hook: tuple(ordered[hook]) for hook in _TASK_HOOKS}
        self._async_wrapping = tuple(zip(wraps, self.around_acall, strict=True))
        gated = [m for m in self.middleware if m.message_fields]
        fields = tuple(dict.fromkeys(field for m in gated for field in m.message_fields))
        #: Reads a message's gating fields at once (a tuple: any() of it tells whether the full plan applies).
        self._gate = operator.attrgetter(*fields, *fields[:1]) if fields else None
        self._gated = frozenset(gated)
        #: Per task: (the plan of a message without any gating field, the plan of one with), resolved once.
        self._plans: dict[BaseTask[Any, Any], tuple[Plan, Plan]] = {}

    def plan(self, task: BaseTask[Any, Any], message: Message) -> Plan:
        """The hooks a message of ``task`` passes: resolved once per task (:meth:`Middleware.wants`), and
        without the middleware whose :attr:`~Middleware.message_fields` the message leaves empty."""
        plans = self._plans.get(task)
        if plans is None:
            plans = self._resolve(task)
        gate = self._gate
        return plans[1] if gate is not None and any(gate(message)) else plans[0]

    def call(self, job: Job) -> Any:
        """Call a sync task with its arguments, in its context (``current_context()``) and every ``around_call``."""
        token = set_context(job.context())
        task = job.task
        try:
            context = (job.plan or self.plan(task, job.message)).context
            if context is None:
                return task.fn(*job.args, **job.kwargs)
            with context(job):
                return task.fn(*job.args, **job.kwargs)
        finally:
            reset_context(token)

    async def acall(self, job: Job) -> Any:
        """Await an async task, in its context and every ``around_acall`` (or ``around_call``)."""
        token = set_context(job.context())
        try:
            async with self.acall_context(job):
                return await job.task.fn(*job.args, **job.kwargs)
        finally:
            reset_context(token)

    def verdict(self, job: Job, exc: Exception) -> Verdict:
        """Ask the ``after_failure`` hooks, innermost first; the first verdict wins, else :class:`Fail`."""
        for hook in (job.plan or self.plan(job.task, job.message)).after_failure:
            verdict = hook(job, exc)
            if verdict is not None:
                return verdict
        return _FAIL

    def _resolve(self, task: BaseTask[Any, Any]) -> tuple[Plan, Plan]:
        """``task``'s two plans: without and with the gated middleware (see :meth:`plan`)."""
        ordered, gated = self._ordered, self._gated

        def chosen(hook: str, plain: bool) -> list[Middleware]:
            return [m for m in ordered[hook] if not (plain and m in gated) and m.wants(task, hook)]

        def plan(plain: bool) -> Plan:
            wrapping = tuple(m.around_call for m in chosen("around_call", plain) if m.wraps(task))
            context = None if not wrapping else wrapping[0] if len(wrapping) == 1 else _nested(wrapping)

            def bound(hook: str) -> tuple[Any, ...]:
                return tuple(getattr(m, hook) for m in chosen(hook, plain))

            return Plan(
                bound("before_run"), bound("after_success"), bound("after_failure"), bound("after_settle"), context
            )

        plans = self._plans[task] = (plan(True), plan(False))
        return plans

    @contextlib.asynccontextmanager
    async def acall_context(self, job: Job) -> Any:
        """Enter every ``around_acall`` (or ``around_call``) context on the running loop."""
        task, gated = job.task, self._gate is not None and any(self._gate(job.message))
        async with contextlib.AsyncExitStack() as stack:
            for middleware, hook in self._async_wrapping:
                if middleware in self._gated and not gated:
                    continue
                if not (middleware.wraps(task) and middleware.wants(task, "around_call")):
                    continue
                manager = hook(job)
                if isinstance(manager, AbstractAsyncContextManager):
                    await stack.enter_async_context(manager)
                else:
                    stack.enter_context(manager)
            yield

    @staticmethod
    def lifecycle(hooks: Sequence[Callable[[App], None]], app: App) -> None:
        """Run lifecycle hooks (e.g. ``chain.lifecycle(chain.on_child_start, app)``) in chain order."""
        for hook in hooks:
            hook(app)

    def settled(self, job: Job, outcome: Outcome) -> Outcome:
        """Run the ``after_settle`` hooks, innermost first; one that raises is logged, and the rest still run."""
        hooks = (job.plan or self.plan(job.task, job.message)).after_settle
        if not hooks:
            return outcome
        for hook in hooks:
            try:
                hook(job, outcome)
            except Exception:
                log.exception("after_settle hook %r failed for task %s[%s]", hook, job.message.task, job.id)
        return outcome

    def owners(self) -> dict[str, str]:
        """Each task option a middleware owns, with the name of its owner."""
        return {option: type(m).__name__ for m in self.middleware for option in sorted(m.options)}


_FAIL = Fail()


def _nested(hooks: tuple[Callable[[Job], AbstractContextManager[None]], ...]) -> Callable[[Job], Any]:
    """Enter each hook's context in order (the first outermost)."""

    @contextlib.contextmanager
    def nested(job: Job) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for hook in hooks:
                stack.enter_context(hook(job))
            yield

    return nested
