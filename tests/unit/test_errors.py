"""The error tree: every error is raised somewhere, the drawing in errors.py is the real tree, and get() of a
revoked task raises TaskRevoked. Pure: the source is read with ``ast``, the app runs on memory://."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from conveyor import App, ResultMissing, TaskError, TaskRevoked, errors

SRC = Path(errors.__file__).resolve().parent


def error_classes() -> dict[str, type[BaseException]]:
    """Every exception class defined in conveyor.errors, by name."""
    return {
        name: value
        for name, value in vars(errors).items()
        if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == errors.__name__
    }


def raised_names() -> set[str]:
    """Names of the exception classes src/conveyor raises or builds to raise.

    ``raise X(...)`` and ``raise X``, and ``X(...)`` built outside errors.py (a factory such as
    ``failures.rebuild`` builds the error its caller raises).
    """
    names: set[str] = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            target: ast.expr | None = None
            if isinstance(node, ast.Raise) and node.exc is not None:
                target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            elif isinstance(node, ast.Call) and path.name != "errors.py":
                target = node.func
            if isinstance(target, ast.Name):
                names.add(target.id)
            elif isinstance(target, ast.Attribute):
                names.add(target.attr)
    return names


def test_every_error_without_subclasses_is_raised_somewhere() -> None:
    # The bases (those with subclasses) exist to be caught; every other error must be raised by conveyor itself.
    classes = error_classes()
    leaves = {
        name for name, cls in classes.items() if not any(o is not cls and issubclass(o, cls) for o in classes.values())
    }
    assert leaves - raised_names() == set()


def test_the_tree_drawn_in_the_module_docstring_names_every_error() -> None:
    drawn = {line.strip("│├└─ ").split()[0] for line in (errors.__doc__ or "").splitlines() if line.strip("│├└─ ")}
    assert set(error_classes()) <= drawn


def test_removed_errors_are_gone() -> None:
    # QueueNotFound and WorkerShutdown were exported but never raised (issue 13): they are removed.
    for name in ("QueueNotFound", "WorkerShutdown"):
        assert not hasattr(errors, name)


def test_get_of_a_revoked_task_raises_task_revoked_which_is_also_a_result_missing() -> None:
    # Given a task revoked before any worker ran it
    app = App("shop", broker="memory://")

    @app.task
    def send() -> None: ...

    result = send.delay()
    assert result.revoke(reason="customer cancelled")
    # Then get() raises TaskRevoked with the id and the reason, which callers catching ResultMissing still catch
    with pytest.raises(TaskRevoked, match="customer cancelled") as caught:
        result.get(timeout=1)
    assert (caught.value.task_id, caught.value.reason) == (result.id, "customer cancelled")
    assert isinstance(caught.value, ResultMissing) and isinstance(caught.value, TaskError)
