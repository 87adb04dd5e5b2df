"""Signature: a task call written down (task name, arguments, send options) to be sent later.

``add.s(1, 2)`` checks the arguments against ``add``'s signature (ParamSpec) and returns a
``Signature[int]`` that a scheduler entry, a chain, a group or a chord sends when its time comes.
A signature is plain data (names, JSON-able arguments, options), so it can travel inside a message;
the app it was made from rides along (not compared, not sent) so ``sig.delay()`` knows where to go.

A signature is one kind of :class:`~conveyor.workflows.canvas.Canvas` (a piece of a workflow);
``workflows/canvas.py`` holds the others: chains, groups and chords.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, Unpack

from conveyor.arguments import check_arguments
from conveyor.errors import ConfigurationError, TaskNotRegistered
from conveyor.message import SendOptions, new_id
from conveyor.workflows.canvas import Canvas, Node

if TYPE_CHECKING:
    from conveyor.app import App
    from conveyor.message import Message
    from conveyor.result import AsyncResult

R = TypeVar("R")


@dataclasses.dataclass(frozen=True, slots=True)
class Signature(Canvas[R]):
    """The call of task ``task`` with ``args``/``kwargs`` and send ``options`` (see ``SendOptions``).

    Attributes:
        immutable: ignore the parent's result in a chain or a callback (``task.si(...)``).
        app: the app ``task.s()`` was called on; not compared and not sent.
    """

    task: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    immutable: bool = False
    app: App | None = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.options) - set(SendOptions.__annotations__))
        if unknown:
            known = ", ".join(SendOptions.__annotations__)
            raise ConfigurationError(f"unknown option(s) {', '.join(unknown)} for {self.task!r}; known: {known}")

    def __repr__(self) -> str:
        params = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.task}.{'si' if self.immutable else 's'}({', '.join(params)})"

    def set(self, **options: Unpack[SendOptions]) -> Signature[R]:
        """A copy with these send options added (they override the ones already set)."""
        return dataclasses.replace(self, options={**self.options, **options})

    def bound_app(self) -> App | None:
        return self.app

    def message(self, app: App, **options: Unpack[SendOptions]) -> Message:
        """Build the message this call sends on ``app``; ``options`` override the signature's own.

        Raises:
            TaskNotRegistered: ``app`` has no task of this name.
            ConfigurationError: a bad option.
        """
        task = app.tasks.get(self.task)
        if task is None:
            raise TaskNotRegistered(f"no task {self.task!r} on app {app.name!r}")
        merged: Any = {**self.options, **options}
        return task.message(self.args, self.kwargs, **merged)

    def freeze(self) -> Node:
        options = dict(self.options)
        link = as_pieces(options.pop("link", None))
        link_error = as_pieces(options.pop("link_error", None))
        task_id = options.pop("task_id", None)
        node: Node = {"k": "s", "task": self.task, "id": task_id or new_id()}
        if task_id:
            node["x"] = True  # the caller chose the id: the broker refuses it while it holds it
        if self.args:
            node["args"] = list(self.args)
        if self.kwargs:
            node["kwargs"] = dict(self.kwargs)
        if options:
            node["opts"] = options
        if self.immutable:
            node["imm"] = True
        if link:
            node["link"] = [piece.freeze() for piece in link]
        if link_error:
            node["err"] = [piece.freeze() for piece in link_error]
        return node

    def apply_async(
        self,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        app: App | None = None,
        **options: Unpack[SendOptions],
    ) -> AsyncResult[R]:
        """Send this call, with ``args`` put before its own, ``kwargs`` and ``options`` over its own.

        A task this process does not register is sent by name (as Celery's ``send_task``).

        Raises:
            TypeError: the arguments do not fit the task's function; nothing is sent.
        """
        merged, target = self._merged(args, kwargs, app, options)
        result: AsyncResult[R] = target.send_workflow(merged)
        return result

    async def aapply_async(
        self,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        app: App | None = None,
        **options: Unpack[SendOptions],
    ) -> AsyncResult[R]:
        """:meth:`apply_async` for a coroutine: sent through ``app.asend``, the event loop runs on meanwhile.

        Raises:
            TypeError: the arguments do not fit the task's function; nothing is sent.
        """
        merged, target = self._merged(args, kwargs, app, options)
        result: AsyncResult[R] = await target.asend_workflow(merged)
        return result

    async def adelay(self, *args: Any, **kwargs: Any) -> AsyncResult[R]:
        """``await aapply_async(args, kwargs)``."""
        return await self.aapply_async(args, kwargs)

    def _merged(
        self, args: Sequence[Any], kwargs: Mapping[str, Any] | None, app: App | None, options: Mapping[str, Any]
    ) -> tuple[Signature[R], App]:
        """This call with ``args`` put before its own and ``kwargs``/``options`` over its own, checked; and its app.

        A task this process does not register is sent by name (as Celery's ``send_task``).

        Raises:
            TypeError: the arguments do not fit the task's function.
        """
        merged: Signature[R] = Signature(
            self.task, (*args, *self.args), {**self.kwargs, **(kwargs or {})}, {**self.options, **options},
            self.immutable, self.app,
        )  # fmt: skip
        target = merged._app(app)
        task = target.tasks.get(self.task) or (self.app.tasks.get(self.task) if self.app is not None else None)
        if task is not None:  # a task known here is checked now; one sent by name, by the worker that runs it
            check_arguments(self.task, task.fn, merged.args, merged.kwargs)
        return merged, target

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult[R]:
        """``apply_async(args, kwargs)``: send this call with more arguments (put before its own)."""
        return self.apply_async(args, kwargs)


def attach_callbacks(message: Message, link: Any, link_error: Any) -> None:
    """Put ``link=``/``link_error=`` pieces (one, or a list) on a message built by ``task.message``."""
    for piece in as_pieces(link):
        message.links.append({"n": piece.freeze()})
    message.link_errors += [piece.freeze() for piece in as_pieces(link_error)]


def as_pieces(value: Any) -> list[Canvas[Any]]:
    """A ``link=``/``link_error=`` option as a list of pieces (one piece, a list of them, or None)."""
    if value is None:
        return []
    pieces = [value] if isinstance(value, Canvas) else list(value)
    for piece in pieces:
        if not isinstance(piece, Canvas):
            raise ConfigurationError(f"link= and link_error= take signatures (task.s(...)), got {piece!r}")
    return pieces
