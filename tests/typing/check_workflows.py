"""Checked by mypy --strict, never run: signatures, chains, groups and chords keep their types.

Every ``# type: ignore[...]`` marks a line that MUST be a type error (``warn_unused_ignores``).
"""

from __future__ import annotations

from typing import Any, assert_type

from conveyor import App, AsyncResult, Chain, Chord, Group, GroupResult, Signature, chain, chord, group

app = App("typing-workflows", broker="memory://")


@app.task
def add(a: int, b: int) -> int:
    return a + b


@app.task
def total(values: list[int]) -> int:
    return sum(values)


@app.task(rate_limit="10/s", concurrency_key=lambda user: user, max_concurrency=2)
def limited(user: str) -> None: ...


def check() -> None:
    assert_type(add.s(1, 2), Signature[int])
    assert_type(add.s(2), Signature[int])  # the first argument comes from a chain's predecessor
    assert_type(add.si(1, 2), Signature[int])
    add.s("x")  # type: ignore[call-overload]
    add.s(1, 2, 3)  # type: ignore[call-overload]
    add.s(1, c=2)  # type: ignore[call-overload]
    assert_type(add.s(1, 2) | add.s(3), Chain[int])
    assert_type(chain(add.s(1, 2), add.s(3)), Chain[Any])  # chain() of many: the last one's type is not tracked
    assert_type(group(add.s(i, i) for i in range(3)), Group[int])
    assert_type(group(add.s(1, 1), add.s(2, 2)).apply_async(), GroupResult[int])
    assert_type(group(add.s(1, 1)).apply_async().get(timeout=1), list[int])
    assert_type(chord([add.s(1, 1)], total.s()), Chord[int])
    assert_type(chord([add.s(1, 1)], total.s()).apply_async(), AsyncResult[int])
    assert_type(add.s(1, 2).apply_async(), AsyncResult[int])
    add.s(1, 2).set(countdown=3, link=total.s(), link_error=[total.s()])
    add.s(1, 2).set(colour="red")  # type: ignore[call-arg]
    add.apply_async((1, 2), link=add.s(1))


async def check_async() -> None:
    assert_type(await add.s(1, 2).adelay(), AsyncResult[int])
    assert_type(await add.s(1).aapply_async((2,), countdown=1), AsyncResult[int])
    await add.s(1, 2).aapply_async(colour="red")  # type: ignore[call-arg]
    assert_type(await (add.s(1, 2) | add.s(3)).adelay(), AsyncResult[int])
    assert_type(await group(add.s(1, 1), add.s(2, 2)).aapply_async(), GroupResult[int])
    assert_type(await (await group(add.s(1, 1)).adelay()).aget(timeout=1), list[int])
    assert_type(await chord([add.s(1, 1)], total.s()).adelay(), AsyncResult[int])


@app.task(rate_limit=["10/s"])  # type: ignore[call-overload, untyped-decorator]
def badly_limited() -> None: ...
