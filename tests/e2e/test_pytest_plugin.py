"""The pytest plugin as a user meets it: examples/testing (docs/testing.md) run by pytest in a subprocess.

The plugin is loaded from conveyor's ``pytest11`` entry point, not from a conftest line: the project
under test only overrides ``conveyor_app``. Its last test starts a real worker subprocess.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "testing"


def test_the_documented_example_project_passes_with_the_plugin(pytester: pytest.Pytester) -> None:
    for item in ("shop", "conftest.py", "test_shop.py"):
        source = EXAMPLE / item
        if source.is_dir():
            shutil.copytree(source, pytester.path / item, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, pytester.path / item)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error", timeout=120)
    result.assert_outcomes(passed=6)
    assert not (pytester.path / "conveyor.db").exists()  # the production default was never opened
