"""Checked by mypy --strict, never run: the public API keeps the task function's types.

Every ``# type: ignore[...]`` here marks a call that MUST be a type error; with
``warn_unused_ignores`` the build fails if one of them stops being an error.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, assert_type

from conveyor import App, AsyncResult

app = App("typing", broker="memory://")


@app.task
def add(a: int, b: int) -> int:
    return a + b


@app.task(retries=3, queue="mail")
def greet(name: str, *, punctuation: str = "!") -> str:
    return f"hello {name}{punctuation}"


@app.task
async def fetch(sku: str) -> float:
    return 1.0


@app.task(retires=3)  # type: ignore[call-overload, untyped-decorator]  # a misspelt option is a type error
def typo() -> None: ...


async def check_async() -> None:
    # The async producer API keeps the types: AsyncResult[float] from `async def fetch(...) -> float`
    r = await fetch.adelay("x")
    assert_type(r, AsyncResult[float])
    assert_type(await r.aget(timeout=1), float)
    assert_type(await add.adelay(1, 2), AsyncResult[int])
    assert_type(await add.aapply_async((1, 2), countdown=5), AsyncResult[int])
    assert_type(await app.asend([add.message((1, 2))]), list[str])
    async for update in r.aupdates():
        assert_type(update.progress, float | None)

    await fetch.adelay(3)  # type: ignore[arg-type]
    await add.adelay(1)  # type: ignore[call-arg]
    await greet.adelay("ann", colour="red")  # type: ignore[call-arg]
    wrong: str = await add.adelay(1, 2)  # type: ignore[assignment]
    print(wrong)


def check() -> None:
    assert_type(add.delay(1, 2), AsyncResult[int])
    assert_type(add.delay(1, 2).get(timeout=1), int)
    assert_type(add(1, 2), int)
    assert_type(greet.delay("ann", punctuation="?"), AsyncResult[str])
    coro: Coroutine[Any, Any, float] = fetch("x")  # calling an async task gives its coroutine
    coro.close()
    assert_type(fetch.delay("x").get(), float)
    assert_type(add.apply_async((1, 2), countdown=5), AsyncResult[int])

    add.delay("x", 2)  # type: ignore[arg-type]
    add.delay(1)  # type: ignore[call-arg]
    greet.delay("ann", punctuation=1)  # type: ignore[arg-type]
    greet.delay("ann", colour="red")  # type: ignore[call-arg]
    fetch.delay(3)  # type: ignore[arg-type]
    wrong: str = add.delay(1, 2).get()  # type: ignore[assignment]
    print(wrong)
