"""Arguments and results keep their annotated types (issue 14, friction 5): conveyor.typed, pure."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import pathlib
import uuid
from collections.abc import Sequence
from typing import Any, TypedDict

import msgspec
import pytest

from conveyor.errors import DecodeError, EncodeError
from conveyor.typed import types_of

UTC = datetime.UTC


class Color(enum.Enum):
    RED = "red"


class Point(msgspec.Struct):
    x: int
    at: datetime.datetime


@dataclasses.dataclass
class Order:
    id: uuid.UUID
    total: decimal.Decimal


@dataclasses.dataclass
class BigOrder(Order):
    note: str = ""


class Row(TypedDict):
    day: datetime.date
    tags: frozenset[str]


def everything(
    when: datetime.datetime,
    day: datetime.date,
    price: decimal.Decimal,
    ident: uuid.UUID,
    blob: bytes,
    pair: tuple[int, str],
    tags: set[str],
    frozen: frozenset[int],
    names: dict[int, str],
    color: Color,
    point: Point,
    order: Order,
    row: Row,
    *,
    plain: int = 0,
) -> dict[int, datetime.date]:
    return {}


SENT: dict[str, Any] = {
    "when": datetime.datetime(2024, 1, 2, 3, 4, tzinfo=UTC),
    "day": datetime.date(2024, 1, 2),
    "price": decimal.Decimal("9.99"),
    "ident": uuid.UUID(int=1),
    "blob": b"\x00bytes",
    "pair": (1, "a"),
    "tags": {"x", "y"},
    "frozen": frozenset({1, 2}),
    "names": {1: "int key"},
    "color": Color.RED,
    "point": Point(1, datetime.datetime(2024, 1, 2, tzinfo=UTC)),
    "order": Order(uuid.UUID(int=2), decimal.Decimal("1.10")),
    "row": Row(day=datetime.date(2024, 1, 3), tags=frozenset({"a"})),
}


def _wire(value: Any) -> Any:
    """What a worker decodes: the value through the message's JSON."""
    return msgspec.json.decode(msgspec.json.encode(value))


def test_every_argument_arrives_as_its_annotation_positional_and_by_keyword() -> None:
    # Given a task annotated with the types the Celery user saw change on the way
    types = types_of("t", everything)
    assert types.typed
    # When the worker converts the JSON it decoded
    args, kwargs = types.arguments(_wire(list(SENT.values())[:5]), _wire(dict(list(SENT.items())[5:])))
    # Then each argument is the value sent, of the annotated type
    got = dict(zip(list(SENT)[:5], args, strict=True)) | kwargs
    assert got == SENT
    assert {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in SENT.items()}
    # And the producer's check passes them all
    types.check(list(SENT.values())[:5], dict(list(SENT.items())[5:]))


def test_plain_and_unannotated_tasks_are_not_converted() -> None:
    def plain(a: int, b: str, c: float, d: list[int], e: dict[str, Any], f: bool | None, g: Any, h) -> int:  # type: ignore[no-untyped-def]
        return 0

    def untyped(a, b):  # type: ignore[no-untyped-def]
        return a

    assert not types_of("p", plain).typed and types_of("p", plain).returns is None
    assert not types_of("u", untyped).typed


def test_a_value_that_does_not_convert_is_refused_at_the_call_naming_the_parameter() -> None:
    types = types_of("shop.t", everything)
    with pytest.raises(EncodeError, match=r"argument 'when' is str 'soon'.*annotated datetime") as info:
        types.check(["soon"], {})
    assert info.value.argument == "when"


@pytest.mark.parametrize(
    ("name", "value", "why"),
    [
        ("price", 0.1, r"would arrive as Decimal"),
        ("order", BigOrder(uuid.UUID(int=2), decimal.Decimal(1), note="dropped"), r"would arrive as Order"),
        ("names", {"a": "str key"}, r"does not convert"),
    ],
)
def test_a_value_that_would_arrive_changed_is_refused(name: str, value: Any, why: str) -> None:
    with pytest.raises(EncodeError, match=f"argument '{name}'.*{why}"):
        types_of("t", everything).check([], {name: value})


def test_a_sequence_parameter_takes_a_tuple_and_extra_arguments_are_checked_by_their_star_annotation() -> None:
    def seq(items: Sequence[datetime.date], *more: uuid.UUID, **named: datetime.date) -> None: ...

    types = types_of("s", seq)
    types.check([(datetime.date(2024, 1, 1),), uuid.UUID(int=3)], {"x": datetime.date(2024, 1, 2)})
    with pytest.raises(EncodeError, match=r"argument '\*more\[1\]'"):
        types.check([[], uuid.UUID(int=1), "nope"], {})
    with pytest.raises(EncodeError, match=r"argument \"\*\*named\['x'\]\""):
        types.check([[]], {"x": "nope"})
    args, kwargs = types.arguments(_wire([["2024-01-01"], str(uuid.UUID(int=3))]), {"x": "2024-01-02"})
    assert args == [[datetime.date(2024, 1, 1)], uuid.UUID(int=3)] and kwargs == {"x": datetime.date(2024, 1, 2)}


def test_a_worker_fails_arguments_that_do_not_convert_with_the_parameter_named() -> None:
    with pytest.raises(DecodeError, match=r"task 't': argument 'day' does not convert to date"):
        types_of("t", everything).arguments(["2024-01-02T03:04:00Z", "not a date"], {})


def test_results_convert_into_the_return_annotation_of_sync_and_async_tasks() -> None:
    async def later() -> dict[int, datetime.date]:
        return {}

    for fn in (everything, later):
        types = types_of("t", fn)
        value = {1: datetime.date(2024, 1, 2)}
        types.check_result(value)
        assert types.result(_wire(value)) == value
    with pytest.raises(EncodeError, match=r"returned str 'x'.*return annotation is dict\[int, date\]"):
        types_of("t", everything).check_result("x")
    with pytest.raises(DecodeError, match=r"result of task 't' does not convert"):
        types_of("t", everything).result("x")


def test_annotations_conveyor_cannot_convert_stay_plain() -> None:
    def odd(path: pathlib.Path, either: str | datetime.datetime, later: Undefined) -> pathlib.Path:  # type: ignore[name-defined]  # noqa: F821
        return path

    types = types_of("o", odd)
    assert not types.typed and types.returns is None


def test_forward_references_resolve_when_the_task_is_first_used() -> None:
    types = types_of("f", _uses_later_class)
    kind = types.by_name["item"]
    assert kind is not None and kind.type is LaterClass


def _uses_later_class(item: LaterClass) -> None: ...


class LaterClass(msgspec.Struct):
    at: datetime.datetime
