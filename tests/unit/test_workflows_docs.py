"""docs/workflows.md runs: every ```python block, in order, in one namespace (memory broker, drain())."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "workflows.md"


def test_every_example_of_the_workflows_page_runs() -> None:
    blocks = re.findall(r"^```python\n(.*?)^```", DOC.read_text(), flags=re.DOTALL | re.MULTILINE)
    assert len(blocks) >= 8
    namespace: dict[str, object] = {"__name__": "shop"}
    for n, block in enumerate(blocks):
        exec(compile(block, f"{DOC}:block{n}", "exec"), namespace)  # the page's own examples
