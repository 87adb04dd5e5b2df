"""Rebuilding a task's exception in the caller from its record (pure: no broker).

The end-to-end side (a real worker, ``except ValueError``) is tests/e2e/test_newcomer_errors.py.
"""

from __future__ import annotations

import pickle
import sys

import pytest

from conveyor import TaskFailed, TimeLimitExceeded
from conveyor.failures import find_exception_type, rebuild
from conveyor.states import ErrorInfo


class Nested:
    class Inner(Exception):
        """Reached by its qualified name."""


class Prefixed(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(f"prefixed: {message}")


def test_builtin_and_conveyor_types_come_back_as_themselves_and_as_task_failed() -> None:
    for name, cls in (
        ("ValueError", ValueError),
        ("FileNotFoundError", OSError),
        ("TimeLimitExceeded", TimeLimitExceeded),
    ):
        exc = rebuild(ErrorInfo(name, "it broke", "Traceback ...\nboom"), "t1")
        assert isinstance(exc, cls) and isinstance(exc, TaskFailed), name
        assert (str(exc), exc.type_name, exc.traceback) == ("it broke", name, "Traceback ...\nboom")
        assert type(exc).__name__ == name
        assert exc.__notes__ == ["Traceback of task t1 in its worker:\nTraceback ...\nboom"]


def test_a_type_of_an_imported_module_is_found_by_its_qualified_name() -> None:
    name = f"{__name__}.Nested.Inner"
    assert find_exception_type(name) is Nested.Inner
    exc = rebuild(ErrorInfo(name, "deep"), "t2")
    assert isinstance(exc, Nested.Inner) and str(exc) == "deep"
    assert exc.__notes__ == [f"Task t2 failed in its worker with {name}: deep (no traceback recorded)"]


def test_a_module_that_is_not_imported_is_never_imported_for_a_record() -> None:
    assert "xml.dom.minidom" not in sys.modules
    assert find_exception_type("xml.dom.minidom.NotSupportedErr") is None
    assert "xml.dom.minidom" not in sys.modules


@pytest.mark.parametrize(
    "name",
    [
        "SystemExit",  # would stop the caller
        "KeyboardInterrupt",
        "conveyor.errors.Retry",  # would retry the caller's own task
        "Retry",
        "conveyor.errors.BrokerUnavailable",  # would read as the caller's own broker outage
        "len",  # not a type
        "NoSuchError",
        f"{__name__}.Prefixed",  # reshapes its message: not faithful
        "UnicodeDecodeError",  # wants 5 arguments
        "Exception",  # a base of TaskFailed: TaskFailed is one already
    ],
)
def test_what_cannot_be_rebuilt_faithfully_stays_a_plain_task_failed(name: str) -> None:
    exc = rebuild(ErrorInfo(name, "msg", "tb"), "t3")
    assert type(exc) is TaskFailed
    assert str(exc) == f"{name}: msg"
    assert exc.traceback == "tb"


def test_a_key_error_gets_its_key_back() -> None:
    exc = rebuild(ErrorInfo("KeyError", "('a', 1)"), "t4")
    assert isinstance(exc, KeyError) and exc.args == (("a", 1),)


def test_the_combined_type_is_made_once_per_exception_type() -> None:
    first, second = (rebuild(ErrorInfo("ValueError", str(i)), "t5") for i in range(2))
    assert type(first) is type(second)
    assert issubclass(type(first), ValueError) and type(first).__mro__[1] is ValueError


def test_a_rebuilt_exception_pickles_as_itself() -> None:
    # (a caller may hand it on: a process pool, a queue of log records)
    exc = rebuild(ErrorInfo("ValueError", "bad", "tb"), "t6")
    loaded = pickle.loads(pickle.dumps(exc))
    assert type(loaded) is type(exc) and str(loaded) == "bad"
    assert (loaded.type_name, loaded.traceback, loaded.__notes__) == ("ValueError", "tb", exc.__notes__)
