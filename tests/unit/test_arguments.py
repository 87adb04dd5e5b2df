"""A call's arguments are checked against the task's signature when it is sent (issue 14): pure, no broker."""

from __future__ import annotations

from typing import Any

import pytest

from conveyor.arguments import check_arguments


def plain(a: int, b: int, c: int = 3) -> None: ...


def keyword_only(a: int, *, key: str, flag: bool = False) -> None: ...


def positional_only(a: int, /, b: int) -> None: ...


def variadic(a: int, *rest: int, **extra: Any) -> None: ...


def star_args(a: int, *rest: int) -> None: ...


GOOD = [
    (plain, (1, 2), {}),
    (plain, (1, 2, 3), {}),
    (plain, (1,), {"b": 2}),
    (plain, (), {"a": 1, "b": 2, "c": 3}),
    (keyword_only, (1,), {"key": "k"}),
    (keyword_only, (), {"a": 1, "key": "k", "flag": True}),
    (positional_only, (1, 2), {}),
    (positional_only, (1,), {"b": 2}),
    (variadic, (1, 2, 3, 4), {"anything": 5}),
    (variadic, (), {"a": 1}),
    (variadic, (1,), {"rest": 2}),  # **extra takes it
    (star_args, (1, 2, 3), {}),
]
BAD = [
    (plain, (1,), {}, "missing a required argument: 'b'"),
    (plain, (1, 2, 3, 4), {}, "too many positional arguments"),
    (plain, (1, 2), {"a": 1}, "multiple values for argument 'a'"),
    (plain, (1, 2), {"d": 4}, "unexpected keyword argument 'd'"),
    (keyword_only, (1,), {}, "missing a required argument: 'key'"),
    (keyword_only, (1, "k"), {}, "too many positional arguments"),
    (positional_only, (), {"a": 1, "b": 2}, "'a' parameter is positional only"),
    (variadic, (), {}, "missing a required argument: 'a'"),
    (star_args, (1,), {"rest": 2}, "unexpected keyword argument 'rest'"),
]


@pytest.mark.parametrize(("fn", "args", "kwargs"), GOOD)
def test_calls_that_bind_pass(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    check_arguments("t", fn, args, kwargs)
    fn(*args, **kwargs)  # the same call binds locally too


@pytest.mark.parametrize(("fn", "args", "kwargs", "why"), BAD)
def test_calls_that_would_not_bind_raise_what_python_says_naming_the_task(
    fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], why: str
) -> None:
    with pytest.raises(TypeError) as info:
        check_arguments("shop.charge", fn, args, kwargs)
    assert str(info.value).startswith("shop.charge(")
    assert why in str(info.value) and str(info.value).endswith("(nothing was sent)")
    with pytest.raises(TypeError):
        fn(*args, **kwargs)  # as a local call does


def test_a_function_without_a_readable_signature_is_not_checked() -> None:
    check_arguments("builtin", max, (1, 2, 3, 4, 5), {"key": abs})
