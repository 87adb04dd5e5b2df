"""The plan of a workflow: which messages to send now, and what each carries for later.

A frozen piece (``Canvas.freeze``) is plain data: ``{"k": "s"}`` a signature (task, args, kwargs, opts,
its task ``id``, ``imm``, its own ``link``/``err`` callbacks), ``{"k": "c"}`` a chain, ``{"k": "g"}`` a
group (with its ``id``), ``{"k": "h"}`` a chord (``header`` group, ``body``). Starting a piece gives the
messages of its first tasks; each message carries what comes after it:

- ``links``: *continuations* ``{"n": piece, "then": [continuations], "slot": slot}`` (empty parts left
  out), started with the
  task's result when it succeeds (the rest of a chain, a ``link=`` callback);
- ``chord``: a *slot* ``{"id", "i", "size", "then", "slot"}``: the task's result fills place ``i`` of the
  gather ``id`` in the result backend; whoever fills the last place starts ``then`` with the whole list
  (a chord's body), or fills its own place in an outer gather (a group inside a chord's header);
- ``link_errors``: pieces started with the failed task's id when it fails for good.

Every message sent by a worker (``spawned``) carries an id chosen by the producer, so sending it again
(a member that ran twice, a worker that died between sending and acking) is harmless: the broker
refuses an id it still holds, and the Workflows middleware drops a copy whose final result is already
recorded. The producer's own first messages need no such care.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from conveyor.errors import ConfigurationError, DuplicateTaskId
from conveyor.message import decode_value, encode_value
from conveyor.result import AsyncResult
from conveyor.results import doomed, entry
from conveyor.states import ErrorInfo, State
from conveyor.workflows.canvas import Node
from conveyor.workflows.groupresult import GroupResult, save_group

if TYPE_CHECKING:
    from conveyor.app import App
    from conveyor.message import Message
    from conveyor.task import BaseTask
    from conveyor.workflows.canvas import Canvas

#: A continuation: a piece to start with a value, what follows it, and the gather slot it fills.
Continuation = dict[str, Any]
#: A gather slot: ``{"id", "i", "size", "then", "slot"}``.
Slot = dict[str, Any]

#: No value to pass on (the first step of a workflow sent by the producer).
NOTHING: Any = object()


def send(app: App, piece: Canvas[Any]) -> Any:
    """Freeze ``piece``, send its first messages in one batch, and return its result handle."""
    node, messages = _first_messages(app, piece)
    if node["k"] == "g":
        save_group(app, node["id"], [result_ids(member) for member in node["tasks"]])
    if messages:
        app.send(messages)
    return result_of(app, node)


async def asend(app: App, piece: Canvas[Any]) -> Any:
    """:func:`send` for a coroutine: the batch goes out through ``app.asend``; the loop never waits on a server."""
    node, messages = _first_messages(app, piece)
    if node["k"] == "g":
        await asyncio.to_thread(save_group, app, node["id"], [result_ids(member) for member in node["tasks"]])
    if messages:
        await app.asend(messages)
    return result_of(app, node)


def _first_messages(app: App, piece: Canvas[Any]) -> tuple[Node, list[Message]]:
    """``piece`` frozen (every id chosen), and the messages that start it."""
    node = piece.freeze()
    return node, start(app, node, NOTHING, [], None, parent=None)


def result_of(app: App, node: Node) -> Any:
    """The result handle of a frozen piece: a task's AsyncResult, the last step's, a GroupResult, the body's."""
    kind = node["k"]
    if kind == "s":
        return AsyncResult(node["id"], app)
    if kind == "c":
        return result_of(app, node["tasks"][-1])
    if kind == "g":
        return GroupResult(node["id"], [result_of(app, m) for m in node["tasks"]], app)
    return result_of(app, node["body"])


def result_ids(node: Node) -> Any:
    """The ids behind :func:`result_of`: a task id, or a list of them for a group (nested for nested groups)."""
    kind = node["k"]
    if kind == "s":
        return node["id"]
    if kind == "c":
        return result_ids(node["tasks"][-1])
    if kind == "g":
        return [result_ids(m) for m in node["tasks"]]
    return result_ids(node["body"])


def start(
    app: App, node: Node, value: Any, then: list[Continuation], slot: Slot | None, parent: str | None
) -> list[Message]:
    """The messages that start ``node`` with ``value`` (or NOTHING), to be followed by ``then`` and fill ``slot``."""
    kind = node["k"]
    if kind == "s":
        return [_task_message(app, node, value, then, slot, parent)]
    if kind == "c":
        steps = node["tasks"]
        if len(steps) == 1:
            return start(app, steps[0], value, then, slot, parent)
        return start(app, steps[0], value, [_follow({"k": "c", "tasks": steps[1:]}, then, slot)], None, parent)
    if kind == "g":
        members = node["tasks"]
        if not (then or slot):
            return [m for member in members for m in start(app, member, value, [], None, parent)]
        size = len(members)
        if not size:  # an empty group's result is [] at once: what follows it starts now
            if slot is not None:
                raise ConfigurationError("an empty group cannot be a member of a chord's header")
            return [m for f in then for m in _start_follow(app, f, [], parent)]
        messages: list[Message] = []
        for i, member in enumerate(members):
            place: Slot = {"id": node["id"], "i": i, "size": size}
            if then:
                place["then"] = then
            if slot is not None:
                place["slot"] = slot
            messages += start(app, member, value, [], place, parent)
        return messages
    # a chord: its header, followed by its body (then whatever follows the chord)
    return start(app, node["header"], value, [_follow(node["body"], then, slot)], None, parent)


def _follow(node: Node, then: list[Continuation], slot: Slot | None) -> Continuation:
    """A continuation; empty parts are left out (a ``null`` in a message costs its encoder a walk)."""
    follow: Continuation = {"n": node}
    if then:
        follow["then"] = then
    if slot is not None:
        follow["slot"] = slot
    return follow


def _start_follow(app: App, follow: Continuation, value: Any, parent: str | None) -> list[Message]:
    return start(app, follow["n"], value, follow.get("then", []), follow.get("slot"), parent)


def _task_message(
    app: App, node: Node, value: Any, then: list[Continuation], slot: Slot | None, parent: str | None
) -> Message:
    task = app.tasks.get(node["task"]) or by_name(app, node["task"])
    args = node.get("args", [])
    if value is not NOTHING and not node.get("imm"):
        args = [value, *args]
    message = task.message(args, node.get("kwargs"), **node.get("opts", {}))
    message.id = node["id"]
    # A worker's send may repeat (the broker refuses an id it holds); so may a producer's own task_id=.
    message.explicit_id = parent is not None or bool(node.get("x"))
    message.parent_id = parent
    links = [*then, *({"n": piece} for piece in node.get("link", ()))]
    if links:
        message.links = links
    if node.get("err"):
        message.link_errors = node["err"]
    if slot is not None:
        message.chord = slot
    return message


def by_name(app: App, name: str) -> BaseTask[Any, Any]:
    """A stand-in for a task this process does not register (sent by name, as Celery's ``send_task``).

    A workflow may name tasks that only some workers register (a producer that imports none of them,
    a step served by another team's workers): the message gets the app's queue for that name (its
    routes, or the default queue) and default options; the worker that runs it has the real task.
    """
    from conveyor.task import Task, TaskOptions

    return Task(app, _not_here, TaskOptions(name=name))


def _not_here(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("a task sent by name is never called in the process that sends it")


# -- what a worker does when a task of a workflow ends -------------------------------------------


def succeeded(app: App, message: Message, value: Any) -> list[Message]:
    """The messages that follow ``message``'s success with ``value``: its links, and a chord body it completes."""
    out: list[Message] = []
    for link in message.links:
        out += _start_follow(app, link, value, message.id)
    slot = message.chord
    while slot is not None:
        filled = app.backend.gather(slot["id"], slot["i"], encode_value(value), app.settings.result_ttl)
        if filled < slot["size"]:
            break
        values = app.backend.gathered(slot["id"])
        value = [decode_value(values[i]) for i in range(slot["size"])]
        for follow in slot.get("then", ()):
            out += _start_follow(app, follow, value, message.id)
        slot = slot.get("slot")  # a group in a chord's header: its list fills the outer place
    return out


def failed(app: App, message: Message, error: ErrorInfo) -> tuple[list[tuple[str, State, bytes]], list[Message]]:
    """What ``message``'s failure for good with ``error`` records and sends.

    Every task after it (its links, a chord it belongs to and what follows that) will never run: each
    is recorded FAILURE with the error (a chord's with an error naming the member), so ``.get()`` on
    any of them raises at once, and their ``link_error`` callbacks and the task's own are sent with
    the failed task's id. A chord fails once: the first failed member claims it.
    """
    records: list[tuple[str, State, bytes]] = []
    out: list[Message] = [m for err in message.link_errors for m in _errback(app, err, message.id)]
    for link in message.links:
        _doom(app, link, error, message.id, records, out)
    slot = message.chord
    if slot is not None:
        named = ErrorInfo(
            error.type, f"chord member {message.task}[{message.id}] failed: {error.message}", error.traceback,
            error.attempt,
        )  # fmt: skip
        _doom_slot(app, slot, named, message.id, records, out)
    return records, out


def _doom_slot(app: App, slot: Slot, error: ErrorInfo, failed_id: str, records: list[Any], out: list[Message]) -> None:
    if not app.backend.claim(f"chord-failed:{slot['id']}", app.settings.result_ttl):
        return  # another member failed first and did this
    app.backend.delete_gather(slot["id"])
    for follow in slot.get("then", ()):
        _doom(app, follow, error, failed_id, records, out)
    if slot.get("slot") is not None:
        _doom_slot(app, slot["slot"], error, failed_id, records, out)


def _doom(
    app: App, follow: Continuation, error: ErrorInfo, failed_id: str, records: list[Any], out: list[Message]
) -> None:
    """Record every task of a continuation that will never run as FAILURE, and send their errbacks."""
    for node in _signatures(follow["n"]):
        records.append(entry(node["id"], doomed(node["task"], error)))
        for err in node.get("err", ()):
            out += _errback(app, err, failed_id)
        for piece in node.get("link", ()):
            _doom(app, {"n": piece}, error, failed_id, records, out)
    for after in follow.get("then", ()):
        _doom(app, after, error, failed_id, records, out)
    if follow.get("slot") is not None:
        _doom_slot(app, follow["slot"], error, failed_id, records, out)


def _signatures(node: Node) -> list[Node]:
    kind = node["k"]
    if kind == "s":
        return [node]
    if kind in ("c", "g"):
        return [s for piece in node["tasks"] for s in _signatures(piece)]
    return _signatures(node["header"]) + _signatures(node["body"])


def _errback(app: App, node: Node, failed_id: str) -> list[Message]:
    """A ``link_error`` piece started with the failed task's id (its id is fixed: sending it twice is harmless)."""
    return start(app, node, failed_id, [], None, parent=failed_id)


def dispatch(app: App, messages: Sequence[Message]) -> None:
    """Send a worker's follow-up messages; one already in the broker (sent before a crash) is skipped."""
    if not messages:
        return
    try:
        app.send(messages)
    except DuplicateTaskId:
        for message in messages:  # the batch was refused whole: send the others one by one
            try:
                app.send([message])
            except DuplicateTaskId:
                continue
