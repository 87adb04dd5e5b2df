"""The public API is exactly what __all__ says."""

from __future__ import annotations

import conveyor


def test_all_lists_exactly_the_public_names() -> None:
    public = {name for name in dir(conveyor) if not name.startswith("_")}
    modules = {
        "app",
        "backends",
        "brokers",
        "context",
        "errors",
        "message",
        "result",
        "retries",
        "settings",
        "states",
        "task",
        "testing",
        "worker",
        "cli",
    }
    assert public - modules == set(conveyor.__all__)
