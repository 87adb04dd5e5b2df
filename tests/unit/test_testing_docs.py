"""The ``conveyor.testing`` example of docs/worker.md runs as written (issue 14: ``conveyor.testing`` documented)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parents[2] / "docs" / "worker.md"


def example() -> str:
    section = DOC.read_text().split("## Testing your tasks without a worker", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found is not None, "docs/worker.md lost its conveyor.testing example"
    return found.group(1)


def test_the_documented_example_runs_and_its_tests_pass() -> None:
    namespace: dict[str, Any] = {"__name__": "docs_example"}
    exec(compile(example(), str(DOC), "exec"), namespace)
    tests = [name for name in namespace if name.startswith("test_")]
    assert tests == ["test_charge_retries_then_succeeds", "test_refund_fails_like_in_production"]
    for name in tests:
        namespace[name]()
    namespace["app"].close()
