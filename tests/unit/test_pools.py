"""The pool registry: every pool a worker accepts is a module of conveyor.worker.pools with a layout."""

from __future__ import annotations

import pytest

from conveyor.worker import POOLS
from conveyor.worker.pools import Pool, pool_class


@pytest.mark.parametrize(("name", "layout"), [("process", (4, 1)), ("thread", (1, 4))])
def test_each_pool_splits_the_concurrency_into_children_and_slots(name: str, layout: tuple[int, int]) -> None:
    # Given a pool by its --pool name
    cls = pool_class(name)
    # Then it is a Pool of that name, and -c 4 makes 4 one-slot children (process) or one 4-slot child (thread)
    assert issubclass(cls, Pool) and cls.name == name
    assert cls.layout(4) == layout


def test_every_pool_the_worker_accepts_is_registered_and_an_unknown_one_is_refused() -> None:
    # Then every name the CLI offers resolves to a pool class, and an unknown name names the known ones
    assert [pool_class(name).name for name in POOLS] == list(POOLS)
    with pytest.raises(ValueError, match="unknown pool 'gevent' \\(known: process, thread"):
        pool_class("gevent")
