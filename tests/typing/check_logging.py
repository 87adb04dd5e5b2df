"""Checked by mypy --strict, never run: the logging surface is typed (docs/logging.md).

Every ``# type: ignore[...]`` here marks a call that MUST be a type error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import assert_type

from conveyor import App, get_task_logger

assert_type(get_task_logger(__name__), logging.Logger)

app = App("typing-logs", broker="memory://", log_config={"version": 1})
App("typing-logs", broker="memory://", log_config="logging.ini")  # type: ignore[arg-type]
other = App("typing-logs-2", broker="memory://")


@other.on_setup_logging
def setup(level: str) -> None:
    logging.basicConfig(level=level)


assert_type(setup, Callable[[str], None])


@other.on_setup_logging  # type: ignore[arg-type]
def wrong(level: int) -> None: ...
