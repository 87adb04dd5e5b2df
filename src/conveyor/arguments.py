"""Check a call's arguments against the task function's signature when it is sent, not when it runs.

``charge.delay(1)`` for ``def charge(order_id, amount)`` used to be enqueued and fail in the worker
with a ``TypeError``; the caller saw the task fail later, or never (``ignore_result``). Celery checks
at ``delay()``; so does conveyor: :func:`check_arguments` raises the ``TypeError`` Python raises for
a wrong local call, naming the task, and nothing is sent.

``delay()`` and ``apply_async()`` check; ``task.message()`` does not, so the batch path
(``app.send([task.message(...) ...])``, about 10 us a message) pays nothing. ``delay()`` is a hot
path too (issue 6), so what a function accepts is worked out once: a call that
binds is recognised with a comparison and a few set operations (under a microsecond); only a call
that does not (or an unusual one) goes through ``inspect.Signature.bind``, which writes the message. A function
whose signature cannot be read (a builtin, a C extension) is not checked.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_BY_KEYWORD = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


@dataclasses.dataclass(frozen=True, slots=True)
class _Checker:
    """What one function accepts, precomputed so that a call that binds is recognised with a few set operations.

    Indexed by how many positional arguments a call gives (capped at the positional parameters):
    the names those arguments fill, and the required names keywords must then give.
    """

    signature: inspect.Signature
    max_positional: int  # positional parameters; unbounded with *args
    filled: tuple[frozenset[str], ...]  # [n]: names the first n positional arguments fill
    still_required: tuple[frozenset[str], ...]  # [n]: required names left after n positional arguments
    keywords: frozenset[str]  # names a keyword may give (not positional-only ones, nor *args' or **kwargs')
    any_keyword: bool  # **kwargs

    def check(self, name: str, args: Sequence[Any], kwargs: Mapping[str, Any] | None) -> None:
        if not self._binds(len(args), kwargs or {}):  # then bind() tells what is wrong (or that it binds after all)
            try:
                self.signature.bind(*args, **(kwargs or {}))
            except TypeError as exc:
                raise TypeError(f"{name}{_bare(self.signature)}: {exc} (nothing was sent)") from None

    def _binds(self, count: int, kwargs: Mapping[str, Any]) -> bool:
        """True when the call certainly binds; False when :meth:`inspect.Signature.bind` must decide."""
        if count > self.max_positional:
            return False
        n = min(count, len(self.filled) - 1)
        if not kwargs:
            return not self.still_required[n]
        names = kwargs.keys()
        if names & self.filled[n] or not self.still_required[n] <= names:
            return False
        return self.any_keyword or names <= self.keywords


#: One checker per task function (None: its signature cannot be read), built on its first call.
_CHECKERS: dict[Callable[..., Any], _Checker | None] = {}


def check_arguments(name: str, fn: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any] | None) -> None:
    """Raise if ``fn(*args, **kwargs)`` would fail to bind, before the call of task ``name`` is sent.

    Raises:
        TypeError: a missing or unexpected argument, as a local call would raise, naming the task.
    """
    checker = _CHECKERS.get(fn, _MISSING)
    if checker is _MISSING:
        checker = _CHECKERS[fn] = _build(fn)
    if checker is not None:
        checker.check(name, args, kwargs)


_MISSING: Any = object()


def _build(fn: Callable[..., Any]) -> _Checker | None:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    params = list(signature.parameters.values())
    positional = [p for p in params if p.kind in _POSITIONAL]
    kinds = {p.kind for p in params}
    required_keywords = {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is p.empty}
    filled = tuple(frozenset(p.name for p in positional[:n]) for n in range(len(positional) + 1))
    still_required = tuple(
        frozenset({p.name for p in positional[n:] if p.default is p.empty} | required_keywords)
        for n in range(len(positional) + 1)
    )
    return _Checker(
        signature,
        max_positional=1 << 30 if inspect.Parameter.VAR_POSITIONAL in kinds else len(positional),
        filled=filled,
        still_required=still_required,
        keywords=frozenset(p.name for p in params if p.kind in _BY_KEYWORD),
        any_keyword=inspect.Parameter.VAR_KEYWORD in kinds,
    )


def _bare(signature: inspect.Signature) -> str:
    """The signature without annotations (under ``from __future__ import annotations`` they print quoted)."""
    params = [p.replace(annotation=p.empty) for p in signature.parameters.values()]
    return str(signature.replace(parameters=params, return_annotation=signature.empty))
