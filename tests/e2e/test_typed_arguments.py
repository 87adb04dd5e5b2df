"""A Celery user's rich arguments through a real worker keep their types (issue 14, friction 5).

The trial sent a datetime, Decimal, UUID, bytes, a tuple, a set and an int-keyed dict to a worker,
and the task got strings, lists and string keys while mypy approved the call. Here a worker
subprocess (conveyor.testing.run_worker, the plugin's helper) runs tasks annotated with those types.
"""

from __future__ import annotations

import datetime
import decimal
import uuid
from pathlib import Path
from typing import Any

import pytest

from conveyor.errors import EncodeError
from conveyor.testing import run_worker
from tests.apps.typed_app import Customer, Line, Received, Size, app, later, receive, untyped

UTC = datetime.UTC


@pytest.mark.parametrize("pool", ["process", "asyncio"])
def test_arguments_and_results_arrive_as_annotated_through_a_real_worker(tmp_path: Path, pool: str) -> None:
    # Given a worker on a SQLite queue, and the values the trial sent
    sent: dict[str, Any] = dict(
        when=datetime.datetime(2024, 1, 2, 3, 4, tzinfo=UTC),
        price=decimal.Decimal("9.99"),
        ident=uuid.UUID(int=1),
        blob=b"bytes",
        pair=(1, 2),
        tags={"a", "b"},
        by_id={1: "int key"},
        size=Size.LARGE,
        lines=[Line("sku-1", 2)],
        customer=Customer(uuid.UUID(int=7), datetime.date(2020, 5, 1)),
    )
    worker = ("tests.apps.typed_app:app", "--pool", pool, "-c", "2")
    with run_worker(app, *worker, broker=f"sqlite:///{tmp_path / 'q.db'}"):
        # When the producer sends them (positionally and by keyword) and an async task a date
        r = receive.delay(sent["when"], sent["price"], **{k: v for k, v in sent.items() if k not in ("when", "price")})
        day = later.delay(datetime.date(2024, 2, 28), 2)
        plain = untyped.delay(sent["when"], ["x"])
        got = r.get(timeout=20)
        # Then the task received each as its own type, and get() returns the annotated result type
        assert isinstance(got, Received)
        assert got.types == {
            "when": "datetime", "price": "Decimal", "ident": "UUID", "blob": "bytes", "pair": "tuple",
            "tags": "set", "by_id": "dict", "by_id.key": "int", "size": "Size", "lines": "list",
            "lines[0]": "Line", "customer": "Customer",
        }  # fmt: skip
        assert {k: getattr(got, k) for k in sent} == sent
        assert day.get(timeout=20) == datetime.date(2024, 3, 1)
        # And an unannotated task keeps today's JSON behaviour
        assert plain.get(timeout=20) == ["str", "list"]
        # And a value that would not arrive as sent is refused at the call, naming the parameter
        with pytest.raises(EncodeError, match=r"argument 'price' is float 0.1, which would arrive as Decimal"):
            receive.delay(sent["when"], 0.1, **{k: v for k, v in sent.items() if k not in ("when", "price")})  # type: ignore[arg-type]
