"""Signature: a task call written down (task name, arguments, send options) to be sent later.

``add.s(1, 2)`` checks the arguments against ``add``'s signature (ParamSpec) and returns a
``Signature[int]`` that a scheduler entry, and later chains and chords, send when their time comes.
A signature is plain data (names, JSON-able arguments, options), so it can travel inside a message.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar, Unpack

from conveyor.errors import ConfigurationError, TaskNotRegistered
from conveyor.message import SendOptions

if TYPE_CHECKING:
    from conveyor.app import App
    from conveyor.message import Message

R = TypeVar("R")


@dataclasses.dataclass(frozen=True, slots=True)
class Signature(Generic[R]):
    """The call of task ``task`` with ``args``/``kwargs`` and send ``options`` (see ``SendOptions``).

    ``R`` is the task's return type, carried for the workflows that will chain results.
    """

    task: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.options) - set(SendOptions.__annotations__))
        if unknown:
            known = ", ".join(SendOptions.__annotations__)
            raise ConfigurationError(f"unknown option(s) {', '.join(unknown)} for {self.task!r}; known: {known}")

    def __repr__(self) -> str:
        params = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.task}.s({', '.join(params)})"

    def set(self, **options: Unpack[SendOptions]) -> Signature[R]:
        """A copy with these send options added (they override the ones already set)."""
        return dataclasses.replace(self, options={**self.options, **options})

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
