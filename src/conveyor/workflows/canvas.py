"""Chains, groups and chords: signatures put together, sent as one workflow.

::

    chain(fetch.s(url), parse.s(), store.s())        # each gets its predecessor's result first
    fetch.s(url) | parse.s() | store.s()               # the same chain
    group(fetch.s(u) for u in urls)                    # in parallel; a GroupResult, in order
    chord(group(fetch.s(u) for u in urls), merge.s())  # merge runs once with every result, in order

Pieces nest: a chain in a group, a group in a chain (the next step gets the group's list: a chord),
a chord in a chain. Nothing here talks to a broker: ``apply_async`` freezes the piece (every task id
chosen up front, so the result handles exist before anything runs) and ``workflows/plan.py`` turns it
into the first messages; the worker's :class:`~conveyor.workflows.middleware.Workflows` middleware
sends the rest as results come in.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from conveyor.errors import ConfigurationError
from conveyor.message import new_id

if TYPE_CHECKING:
    from conveyor.app import App
    from conveyor.result import AsyncResult
    from conveyor.workflows.groupresult import GroupResult

R = TypeVar("R")
T = TypeVar("T")


#: A frozen piece of a workflow, as it travels in messages (see ``workflows/plan.py``).
Node = dict[str, Any]


class Canvas(Generic[R]):
    """A piece of a workflow: a signature, a chain, a group or a chord. ``R`` is what its result gives.

    Every piece can be sent (``apply_async``), piped into the next piece (``|``) and written into a
    message as plain data (:meth:`freeze`, with every task id chosen up front, so the producer holds
    the result handles before anything runs).
    """

    def freeze(self) -> Node:
        """This piece as plain data, with a fresh id for every task (and group) in it."""
        raise NotImplementedError

    def bound_app(self) -> App | None:
        """The app of the first signature that knows one (``task.s()`` records it)."""
        raise NotImplementedError

    def __or__(self, other: Canvas[T]) -> Chain[T]:
        """``a.s() | b.s()``: a chain that runs ``other`` with this piece's result."""
        return Chain(self, other)

    def _app(self, app: App | None) -> App:
        found = app or self.bound_app()
        if found is None:
            raise ConfigurationError(f"{self!r} has no app: build it with task.s(...) or pass app=")
        return found


def _pieces(tasks: Iterable[Any], what: str) -> tuple[Canvas[Any], ...]:
    pieces = tuple(tasks)
    for piece in pieces:
        if not isinstance(piece, Canvas):
            raise ConfigurationError(f"{what} takes signatures (task.s(...)), chains, groups or chords; got {piece!r}")
    return pieces


def _first_app(pieces: Iterable[Canvas[Any]]) -> App | None:
    for piece in pieces:
        app = piece.bound_app()
        if app is not None:
            return app
    return None


class Chain(Canvas[R]):
    """Pieces run one after another, each given its predecessor's result as first argument.

    ``.get()`` on its result returns the last piece's result; a failure stops the chain and is what
    ``.get()`` raises (the original exception type, as for a single task).
    """

    def __init__(self, *tasks: Canvas[Any]) -> None:
        flat: list[Canvas[Any]] = []
        for piece in _pieces(tasks, "chain()"):
            flat.extend(piece.tasks if isinstance(piece, Chain) else (piece,))
        if not flat:
            raise ConfigurationError("chain() needs at least one signature")
        self.tasks: tuple[Canvas[Any], ...] = tuple(flat)

    def __repr__(self) -> str:
        return " | ".join(repr(t) for t in self.tasks)

    def bound_app(self) -> App | None:
        return _first_app(self.tasks)

    def freeze(self) -> Node:
        return {"k": "c", "tasks": [t.freeze() for t in self.tasks]}

    def apply_async(self, *, app: App | None = None) -> AsyncResult[R]:
        """Send the chain's first step(s); the result handle is the last step's."""
        result: AsyncResult[R] = self._app(app).send_workflow(self)
        return result

    def delay(self) -> AsyncResult[R]:
        """``apply_async()``."""
        return self.apply_async()

    async def aapply_async(self, *, app: App | None = None) -> AsyncResult[R]:
        """:meth:`apply_async` for a coroutine: the first messages go out through ``app.asend``."""
        result: AsyncResult[R] = await self._app(app).asend_workflow(self)
        return result

    async def adelay(self) -> AsyncResult[R]:
        """``await aapply_async()``."""
        return await self.aapply_async()


class Group(Canvas[list[R]]):
    """Pieces run in parallel, sent in one batch; their results come back as a list, in order."""

    def __init__(self, *tasks: Canvas[R] | Iterable[Canvas[R]]) -> None:
        if len(tasks) == 1 and not isinstance(tasks[0], Canvas):
            tasks = tuple(tasks[0])
        self.tasks: tuple[Canvas[Any], ...] = _pieces(tasks, "group()")

    def __repr__(self) -> str:
        return f"group({', '.join(repr(t) for t in self.tasks)})"

    def bound_app(self) -> App | None:
        return _first_app(self.tasks)

    def freeze(self) -> Node:
        return {"k": "g", "id": new_id(), "tasks": [t.freeze() for t in self.tasks]}

    def apply_async(self, *, app: App | None = None) -> GroupResult[R]:
        """Send every member in one batch; the GroupResult is saved in the result backend (``app.group_result``)."""
        result: GroupResult[R] = self._app(app).send_workflow(self)
        return result

    def delay(self) -> GroupResult[R]:
        """``apply_async()``."""
        return self.apply_async()

    async def aapply_async(self, *, app: App | None = None) -> GroupResult[R]:
        """:meth:`apply_async` for a coroutine: the first messages go out through ``app.asend``."""
        result: GroupResult[R] = await self._app(app).asend_workflow(self)
        return result

    async def adelay(self) -> GroupResult[R]:
        """``await aapply_async()``."""
        return await self.aapply_async()


class Chord(Canvas[R]):
    """A group (the header) whose list of results, in order, is given to ``body`` once every member succeeded.

    The body runs exactly once, even when members are redelivered or run twice. A member that fails
    for good fails the chord: the body does not run, its result records the error naming the member,
    and its ``link_error`` callbacks run.
    """

    def __init__(self, header: Group[Any] | Iterable[Canvas[Any]], body: Canvas[R]) -> None:
        self.header = header if isinstance(header, Group) else Group(header)
        if not isinstance(body, Canvas):
            raise ConfigurationError(f"chord() takes a signature as its body, got {body!r}")
        self.body = body

    def __repr__(self) -> str:
        return f"chord({self.header!r}, {self.body!r})"

    def bound_app(self) -> App | None:
        return _first_app((self.header, self.body))

    def freeze(self) -> Node:
        return {"k": "h", "header": self.header.freeze(), "body": self.body.freeze()}

    def apply_async(self, *, app: App | None = None) -> AsyncResult[R]:
        """Send the header's members; the result handle is the body's."""
        result: AsyncResult[R] = self._app(app).send_workflow(self)
        return result

    def delay(self) -> AsyncResult[R]:
        """``apply_async()``."""
        return self.apply_async()

    async def aapply_async(self, *, app: App | None = None) -> AsyncResult[R]:
        """:meth:`apply_async` for a coroutine: the first messages go out through ``app.asend``."""
        result: AsyncResult[R] = await self._app(app).asend_workflow(self)
        return result

    async def adelay(self) -> AsyncResult[R]:
        """``await aapply_async()``."""
        return await self.aapply_async()


def chain(*tasks: Canvas[Any]) -> Chain[Any]:
    """Run ``tasks`` one after another, each given its predecessor's result first (see :class:`Chain`)."""
    return Chain(*tasks)


def group(*tasks: Canvas[R] | Iterable[Canvas[R]]) -> Group[R]:
    """Run ``tasks`` (given one by one or as one iterable) in parallel (see :class:`Group`)."""
    return Group(*tasks)


def chord(header: Group[Any] | Iterable[Canvas[Any]], body: Canvas[R]) -> Chord[R]:
    """Run ``header``'s members in parallel, then ``body`` once with their results in order (see :class:`Chord`)."""
    return Chord(header, body)
