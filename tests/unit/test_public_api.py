"""The public API is exactly what __all__ says."""

from __future__ import annotations

import types

import conveyor


def test_all_lists_exactly_the_public_names() -> None:
    public = {
        name
        for name, value in vars(conveyor).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(conveyor.__all__)
