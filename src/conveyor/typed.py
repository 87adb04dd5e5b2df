"""Typed arguments and results: a task's annotations decide what its arguments and its result arrive as.

JSON carries strings, numbers, booleans, null, lists and string-keyed objects. msgspec writes richer
values as those (a datetime, date, time or timedelta as an ISO string, a Decimal or UUID as a string,
bytes as base64, a tuple, set or frozenset as a list, an int key as a string, an enum as its value, a
Struct, dataclass or TypedDict as an object), so a task used to receive ``'2024-01-02T03:04:00Z'``
for ``when: datetime`` while mypy approved the call (issue 14, friction 5). Now:

- the worker converts each argument into its parameter's annotation (``msgspec.convert``) before the
  call; an argument that does not convert fails the task and dead-letters the message, with the
  parameter named (a producer that skipped the check below, or a changed signature);
- ``delay()`` and ``apply_async()`` refuse, with an :class:`~conveyor.errors.EncodeError` naming the
  parameter, an argument that would not arrive as what was sent: one that does not convert into its
  annotation (``"soon"`` for a datetime), or that converts into something else (a float for a
  Decimal, a subclass whose extra fields would be dropped);
- ``AsyncResult.get()`` (and ``.result``) convert the stored value into the return annotation (of a
  sync or an ``async def`` task), and the worker fails a task whose value would not convert.

Cost (issue 6: per-task overhead is the enemy). What a task's annotations ask for is worked out once
per task (:func:`types_of`, cached on the task, warmed when a worker starts). Only *typed* parameters
are converted or checked: those whose annotation JSON does not already give (``str``, ``int``,
``float``, ``bool``, ``None``, ``Any``, literals, and lists, ``str``-keyed dicts and unions of those
are *plain*). A task whose parameters and result are all plain or unannotated, like the benchmark's
``noop(i: int)``, pays nothing and behaves as before: JSON in, JSON out.

An annotation msgspec cannot convert into (a plain class, ``pathlib.Path``, ``str | datetime``) or a
forward reference that does not resolve (a name imported only under ``TYPE_CHECKING``) leaves that
parameter plain: such a value fails to encode at ``delay()`` anyway, naming the argument.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec
import msgspec.inspect as mi

from conveyor.errors import DecodeError, EncodeError

__all__ = ["Kind", "TaskTypes", "types_of"]

log = logging.getLogger("conveyor")

#: Leaf types JSON decodes into as they are: no conversion needed.
_PLAIN_LEAVES = (mi.AnyType, mi.StrType, mi.IntType, mi.FloatType, mi.BoolType, mi.NoneType, mi.LiteralType)
#: Types whose fields (``.fields[i].type``) decide whether they can be converted.
_RECORDS = (mi.StructType, mi.DataclassType, mi.TypedDictType, mi.NamedTupleType)


class Kind:
    """An annotation arguments or results are converted into, with its decoder built once.

    Values are converted by decoding their JSON with a decoder made for the annotation: under half of
    ``msgspec.convert``'s cost per value (which works the type out on every call), and the exact
    semantics of the wire (``{"1": ...}`` gives ``{1: ...}`` for ``dict[int, str]``, as JSON keys are strings).
    """

    __slots__ = ("decoder", "type")

    def __init__(self, annotation: Any) -> None:
        self.type = annotation
        self.decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(annotation)

    def __repr__(self) -> str:
        return _show(self.type)

    def convert(self, value: Any) -> Any:
        """``value`` (as JSON decoded it) in this annotation's type.

        Raises:
            msgspec.ValidationError: it does not convert.
        """
        return self.decoder.decode(_json.encode(value))


@dataclasses.dataclass(frozen=True, slots=True)
class TaskTypes:
    """What one task function's annotations ask for: a :class:`Kind`, or ``None`` for a plain (or unusable) one.

    Attributes:
        name: the task's name, for error messages.
        positional: (name, annotation) of each positional parameter, in order.
        var_positional: the annotation of each item of ``*args``.
        by_name: the annotation of every parameter a keyword can give (plain ones too, as None).
        var_keyword: the annotation of each value of ``**kwargs``.
        returns: the return annotation (for ``async def``: what the coroutine returns).
        typed: some argument needs converting; False means the call goes through as JSON gave it.
    """

    name: str
    _typed_positional: tuple[tuple[int, str, Kind], ...] = dataclasses.field(init=False, repr=False, compare=False)
    positional: tuple[tuple[str, Kind | None], ...] = ()
    var_positional: tuple[str, Kind | None] | None = None
    by_name: Mapping[str, Kind | None] = dataclasses.field(default_factory=dict)
    var_keyword: tuple[str, Kind | None] | None = None
    returns: Kind | None = None
    typed: bool = False

    def __post_init__(self) -> None:
        # The worker's hot path walks only these: (index, name, annotation) of each typed positional parameter.
        typed = tuple((i, name, kind) for i, (name, kind) in enumerate(self.positional) if kind is not None)
        object.__setattr__(self, "_typed_positional", typed)

    def arguments(self, args: list[Any], kwargs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        """The arguments a worker decoded from JSON, converted into their annotations (new containers:
        the message keeps its JSON values, which a retry sends again).

        Raises:
            DecodeError: an argument does not convert; the message names the parameter.
        """
        converted = list(args)
        count = len(converted)
        for i, name, kind in self._typed_positional:
            if i < count:
                converted[i] = self._convert(name, kind, converted[i])
        if count > len(self.positional) and self.var_positional is not None and self.var_positional[1] is not None:
            for i, (name, extra) in enumerate(self._slots(count)[len(self.positional) :], len(self.positional)):
                converted[i] = self._convert(name, extra, converted[i])
        if not kwargs:
            return converted, kwargs
        return converted, {key: self._convert(*self._keyword(key), value) for key, value in kwargs.items()}

    def check(self, args: Sequence[Any], kwargs: Mapping[str, Any] | None) -> None:
        """Refuse, before anything is sent, an argument that would not arrive as the value sent.

        Raises:
            EncodeError: the argument does not convert into its annotation, or converts into a
                different value; the message names the parameter.
        """
        count = len(args)
        for i, name, kind in self._typed_positional:
            if i < count:
                self._check_one(name, kind, args[i])
        if count > len(self.positional):
            for i, (name, extra) in enumerate(self._slots(count)[len(self.positional) :], len(self.positional)):
                if extra is not None:
                    self._check_one(name, extra, args[i])
        for key, value in (kwargs or {}).items():
            name, named = self._keyword(key)
            if named is not None:
                self._check_one(name, named, value)

    def check_result(self, value: Any) -> None:
        """Fail (in the worker) a return value that the producer's ``get()`` could not convert back.

        Raises:
            EncodeError: the value does not round-trip through JSON into the return annotation.
        """
        if self.returns is None:
            return
        why = _round_trip_failure(value, self.returns)
        if why is not None:
            raise EncodeError(
                f"task {self.name!r} returned {_describe(value)}, which {why} (its return annotation is "
                f"{_show(self.returns)})",
                argument="return value",
            )

    def result(self, value: Any) -> Any:
        """A stored result value, converted into the return annotation.

        Raises:
            DecodeError: the stored value does not convert (a worker ran other code than this process has).
        """
        if self.returns is None:
            return value
        try:
            return self.returns.convert(value)
        except msgspec.ValidationError as exc:
            raise DecodeError(
                f"the result of task {self.name!r} does not convert to its return annotation "
                f"{_show(self.returns)}: {exc}"
            ) from None

    def _slots(self, count: int) -> list[tuple[str, Kind | None]]:
        """(name, annotation) of the first ``count`` positional arguments."""
        slots = list(self.positional[:count])
        if count > len(slots):
            extra = self.var_positional or ("*args", None)
            slots += [(f"{extra[0]}[{i}]", extra[1]) for i in range(count - len(slots))]
        return slots

    def _keyword(self, key: str) -> tuple[str, Kind | None]:
        if key in self.by_name:
            return key, self.by_name[key]
        if self.var_keyword is None:
            return key, None
        return f"{self.var_keyword[0]}[{key!r}]", self.var_keyword[1]

    def _convert(self, name: str, kind: Kind | None, value: Any) -> Any:
        if kind is None:
            return value
        try:
            return kind.convert(value)
        except msgspec.ValidationError as exc:
            raise DecodeError(
                f"task {self.name!r}: argument {name!r} does not convert to {_show(kind)}: {exc} "
                f"(got {_describe(value)})"
            ) from None

    def _check_one(self, name: str, kind: Kind, value: Any) -> None:
        why = _round_trip_failure(value, kind)
        if why is not None:
            raise EncodeError(
                f"task {self.name!r}: argument {name!r} is {_describe(value)}, which {why} "
                f"(the parameter is annotated {_show(kind)}); nothing was sent",
                argument=name,
            )


def _round_trip_failure(value: Any, kind: Kind) -> str | None:
    """Why ``value`` would not arrive as itself through JSON into ``kind``; None when it would.

    It arrives as itself when the converted value equals it, or writes the same JSON (a tuple for a
    ``Sequence[int]`` arrives as a list: the same data in the container the annotation names).
    """
    try:
        body = _json.encode(value)
    except (TypeError, ValueError, OverflowError):
        return None  # not JSON at all: the encoder's EncodeError names the argument
    try:
        back = kind.decoder.decode(body)
    except msgspec.ValidationError as exc:
        return f"does not convert to {_show(kind)} ({exc})"
    try:
        if back == value or _json.encode(back) == body:
            return None
    except Exception:  # a user __eq__ that raises: judge by the JSON alone
        return None
    return f"would arrive as {_describe(back)}"


_json = msgspec.json.Encoder()


def types_of(name: str, fn: Callable[..., Any]) -> TaskTypes:
    """What the annotations of task ``name``'s function ``fn`` ask for (the task keeps it: worked out once).

    Call it when the task is first used, not when it is declared: a forward reference to a class
    defined further down the module resolves only then.
    """
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin or C function: nothing to go by
        return TaskTypes(name)
    hints = _hints(fn)
    positional: list[tuple[str, Any]] = []
    by_name: dict[str, Any] = {}
    var_positional = var_keyword = None
    for param in signature.parameters.values():
        kind = _usable(name, param.name, hints.get(param.name))
        if param.kind is param.VAR_POSITIONAL:
            var_positional = ("*" + param.name, kind)
        elif param.kind is param.VAR_KEYWORD:
            var_keyword = ("**" + param.name, kind)
        else:
            if param.kind is not param.KEYWORD_ONLY:
                positional.append((param.name, kind))
            if param.kind is not param.POSITIONAL_ONLY:
                by_name[param.name] = kind
    kinds = [kind for _, kind in positional] + list(by_name.values())
    kinds += [v[1] for v in (var_positional, var_keyword) if v is not None]
    return TaskTypes(
        name,
        positional=tuple(positional),
        var_positional=var_positional,
        by_name=by_name,
        var_keyword=var_keyword,
        returns=_usable(name, "return", hints.get("return")),
        typed=any(kind is not None for kind in kinds),
    )


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    """The function's resolved annotations; one that does not resolve is left out (it stays plain)."""
    try:
        return typing.get_type_hints(fn, include_extras=True)
    except Exception:  # one bad forward reference: resolve the others one by one
        pass
    hints: dict[str, Any] = {}
    space = getattr(fn, "__globals__", {})
    for key, annotation in getattr(fn, "__annotations__", {}).items():
        try:
            hints[key] = eval(annotation, space) if isinstance(annotation, str) else annotation
        except Exception:
            log.debug("annotation %r of %s does not resolve; that parameter is passed as JSON", key, fn)
    return hints


def _usable(task: str, where: str, annotation: Any) -> Kind | None:
    """The kind to convert into, when ``annotation`` needs converting; None when JSON already gives it, or it cannot."""
    if annotation is None or annotation is inspect.Parameter.empty:
        return None
    try:
        info = mi.type_info(annotation)
        kind = Kind(annotation)  # unions msgspec cannot decode (``str | datetime``) raise here
    except Exception:
        log.debug("task %s: %s is annotated %r, which is not converted (passed as JSON)", task, where, annotation)
        return None
    return kind if _kind(info, set()) == "typed" else None


def _kind(info: mi.Type, seen: set[type]) -> str:
    """ "plain" (JSON gives it), "typed" (convert into it) or "opaque" (cannot: a custom class somewhere)."""
    if isinstance(info, _PLAIN_LEAVES):
        return "plain"
    if isinstance(info, mi.CustomType):
        return "plain" if info.cls is object else "opaque"
    if isinstance(info, mi.ListType):
        return _kind(info.item_type, seen)
    if isinstance(info, mi.DictType):
        # JSON keys are strings: any other key type (int, UUID, an enum) is converted.
        plain_key = isinstance(info.key_type, mi.StrType | mi.AnyType)
        key = "plain" if plain_key else _worst("typed", _kind(info.key_type, seen))
        return _worst(key, _kind(info.value_type, seen))
    if isinstance(info, mi.UnionType):
        return _worst(*(_kind(t, seen) for t in info.types))
    parts = _parts(info, seen)
    return _worst("typed", *(_kind(t, seen) for t in parts))


def _parts(info: mi.Type, seen: set[type]) -> list[mi.Type]:
    """The types inside a container or record (a record already being walked has none: recursion)."""
    if isinstance(info, _RECORDS):
        if info.cls in seen:
            return []
        seen.add(info.cls)
        return [f.type for f in info.fields]
    if isinstance(info, mi.TupleType):
        return list(info.item_types)
    item = getattr(info, "item_type", None)  # VarTuple, Set, FrozenSet
    return [] if item is None else [item]


def _worst(*kinds: str) -> str:
    if "opaque" in kinds:
        return "opaque"
    return "typed" if "typed" in kinds else "plain"


def _show(kind: Any) -> str:
    """An annotation as a reader writes it: ``datetime``, ``dict[int, str]``."""
    if isinstance(kind, Kind):
        kind = kind.type
    if isinstance(kind, type):
        return kind.__qualname__
    return repr(kind).replace("typing.", "").replace("datetime.", "").replace("decimal.", "")


def _describe(value: Any) -> str:
    """A value for an error message: its type and a short repr."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"
