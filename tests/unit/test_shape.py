"""The worker's shape (issue 12): the per-message path stays short and each feature keeps its own module.

Every feature that lands adds a temptation to branch in the executor or the child; these bounds make
that a visible decision (split the feature into its middleware or pool module instead).
"""

from __future__ import annotations

import ast
from pathlib import Path

WORKER = Path(__file__).resolve().parents[2] / "src" / "conveyor" / "worker"


def _lines(name: str) -> int:
    return len((WORKER / name).read_text().splitlines())


def test_the_executor_and_the_child_stay_short() -> None:
    assert _lines("executor.py") <= 150, "worker/executor.py is the short per-message path: move a feature out"
    assert _lines("child.py") <= 250, "worker/child.py grew past 250 lines: move a pool's or feature's code out"


def test_result_records_are_built_in_one_module() -> None:
    src = WORKER.parent
    builders = sorted(
        str(path.relative_to(src))
        for path in src.rglob("*.py")
        if any(
            isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "ResultRecord"
            for node in ast.walk(ast.parse(path.read_text()))
        )
    )
    assert builders == ["results.py"], f"ResultRecord(...) is built outside results.py: {builders}"
