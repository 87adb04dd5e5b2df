"""docs/postgres.md shows the transactional-enqueue code that the suite runs: each of its Python blocks
under "Transactional enqueue" is a verbatim part of examples/postgres_orders.py (which
tests/e2e/test_postgres_transactions.py runs under a real worker)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_docs_examples_are_the_tested_example() -> None:
    doc = (ROOT / "docs" / "postgres.md").read_text()
    section = doc.split("## Transactional enqueue", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    example = (ROOT / "examples" / "postgres_orders.py").read_text()
    assert len(blocks) == 4  # psycopg, psycopg async, SQLAlchemy, Django
    for block in blocks:
        assert block in example, f"docs/postgres.md shows code that examples/postgres_orders.py does not have:\n{block}"
