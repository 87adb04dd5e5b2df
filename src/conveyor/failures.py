"""The exception a failed task raised, rebuilt in the caller by ``AsyncResult.get()``.

A worker records a failure as text (:class:`~conveyor.states.ErrorInfo`: the exception's type name,
its message and the formatted traceback), never pickled. ``get()`` turns that record back into an
exception the caller can catch the way it would catch the task's own: ``except ValueError`` matches
a task that raised ``ValueError``, as in Celery.

How, and the rules that keep it sound:

- The type is looked up by name among the builtins, ``conveyor.errors`` (for ``TimeLimitExceeded``)
  and the modules **already imported** in the caller (``sys.modules``). Nothing is imported on the
  strength of a name read from the result backend: a record must never make the caller run a
  module's code. The producer has nearly always imported the module that defines a task's own
  exceptions (it imported the task to call it).
- It must be an ``Exception`` subclass that takes the message as its one argument (``cls(message)``)
  and prints it back unchanged (``str(exc) == message``): a constructor that wants other arguments or
  reshapes its message, or a ``__str__`` of its own, would give an exception that is not the task's.
  ``BaseException``-only types (``SystemExit``, ``KeyboardInterrupt``), conveyor's ``Retry`` and
  ``BrokerError`` types are never rebuilt: raised in a caller (maybe itself a task), they would stop
  it, make its own task retry, or read as an outage of its own broker.
- The exception raised is an instance of a subclass of **both** the task's type and
  :class:`~conveyor.errors.TaskFailed`, made once per type: ``except ValueError`` and the
  ``except TaskFailed`` written before this change both match, and ``type_name``, ``remote_message``
  and ``traceback`` are there as before. Its ``__name__``, ``__qualname__`` and ``__module__`` are the
  task's type's, so it prints as ``ValueError: ...``, and a task that re-raises it records the same
  type name again. ``type(exc) is ValueError`` is false: it is a subclass.
- Otherwise (unknown type, a constructor that wants other arguments, a type that cannot be combined
  with ``TaskFailed``) a plain :class:`~conveyor.errors.TaskFailed` is raised, as before.
- Either way the remote traceback travels with the exception: as ``exc.traceback`` and as a note
  (PEP 678 ``__notes__``), which Python prints under the caller's own traceback. Without a
  traceback (a hard time limit kills the process), the note names the task and its error.
"""

from __future__ import annotations

import ast
import builtins
import sys
from typing import Any

from conveyor import errors
from conveyor.errors import BrokerError, Retry, TaskFailed
from conveyor.states import ErrorInfo

#: Types raised in a caller that would mean something else there: ``Retry`` would retry the caller's
#: own task, a ``BrokerError`` would read as an outage of the caller's broker.
_NEVER_REBUILT = (Retry, BrokerError)

#: The combined class made for each task exception type, so one type is built once per process.
_COMBINED: dict[type[Exception], type[TaskFailed]] = {}


def rebuild(error: ErrorInfo, task_id: str) -> TaskFailed:
    """The exception to raise in the caller for a task that failed with ``error``.

    Returns:
        an instance of both the task's exception type and :class:`TaskFailed` when that type can be
        found and built from its message, else a plain :class:`TaskFailed`; both carry the remote
        traceback.
    """
    exc = _as_original(error) or TaskFailed(error.type, error.message, error.traceback)
    if error.traceback:
        exc.add_note(f"Traceback of task {task_id} in its worker:\n{error.traceback.rstrip()}")
    else:  # e.g. a hard time limit: the process was killed, no traceback; still say where it came from
        exc.add_note(f"Task {task_id} failed in its worker with {error.type}: {error.message} (no traceback recorded)")
    return exc


def _as_original(error: ErrorInfo) -> TaskFailed | None:
    cls = find_exception_type(error.type)
    if cls is None:
        return None
    combined = _combined(cls)
    if combined is None:
        return None
    try:
        exc = combined.__new__(combined, error.message)
        cls.__init__(exc, *_arguments(cls, error.message))
        faithful = str(exc) == error.message
    except Exception:  # the type wants other arguments, or cannot print: TaskFailed carries the failure instead
        return None
    if not faithful:  # its constructor or __str__ reshapes the message: this would not be the task's exception
        return None
    exc.type_name = error.type
    exc.remote_message = error.message
    exc.traceback = error.traceback
    return exc


def _reduce(exc: TaskFailed) -> tuple[Any, ...]:
    """Pickle a rebuilt exception as the record it came from (with its notes), rebuilt again on load."""
    return _unpickle, (exc.type_name, exc.remote_message, exc.traceback, getattr(exc, "__notes__", []))


def _unpickle(type_name: str, message: str, traceback: str, notes: list[str]) -> TaskFailed:
    exc = _as_original(ErrorInfo(type_name, message, traceback)) or TaskFailed(type_name, message, traceback)
    for note in notes:
        exc.add_note(note)
    return exc


def find_exception_type(name: str) -> type[Exception] | None:
    """The ``Exception`` subclass a worker recorded as ``name``, if this process has it, else None.

    ``name`` is a builtin's name (``ValueError``), a conveyor error's (``TimeLimitExceeded``), or
    ``module.QualName`` of a type defined in a module this process has imported already.
    """
    found: Any
    if "." not in name:
        found = getattr(builtins, name, None) or getattr(errors, name, None)
    else:
        found = _from_loaded_module(name)
    if not isinstance(found, type) or not issubclass(found, Exception) or issubclass(found, _NEVER_REBUILT):
        return None
    return found


def _from_loaded_module(name: str) -> object:
    parts = name.split(".")
    for split in range(len(parts) - 1, 0, -1):  # the longest module prefix first: "a.b.C" before "a.b" + "C"
        module = sys.modules.get(".".join(parts[:split]))
        if module is None:
            continue
        found: object = module
        for attr in parts[split:]:
            found = getattr(found, attr, None)
        return found
    return None


def _combined(cls: type[Exception]) -> type[TaskFailed] | None:
    """A subclass of ``cls`` and :class:`TaskFailed` named like ``cls``; None when they do not combine."""
    if issubclass(cls, TaskFailed) or issubclass(TaskFailed, cls):
        return None  # already a TaskFailed, or one of its bases (Exception, ConveyorError): TaskFailed is one
    combined = _COMBINED.get(cls)
    if combined is None:
        namespace = {
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
            "__doc__": cls.__doc__,
            "__reduce__": _reduce,  # pickle can find the type's name, but it names the task's type, not this one
        }
        try:
            combined = type(cls.__name__, (cls, TaskFailed), namespace)
        except TypeError:  # a layout or metaclass conflict, a final class
            return None
        _COMBINED[cls] = combined
    return combined


def _arguments(cls: type[Exception], message: str) -> tuple[object, ...]:
    """The constructor arguments that give back ``message``: ``KeyError`` prints its key's repr."""
    if issubclass(cls, KeyError):
        try:
            return (ast.literal_eval(message),)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            pass
    return (message,)
