"""JSON logs from a worker: ``App(log_config=...)`` replaces conveyor's own logging set-up (docs/logging.md).

Run it with ``conveyor worker examples.json_logs:app``: every line on stderr is one JSON object, and
those logged inside a task carry its ``task_name`` and ``task_id`` (conveyor adds both to every record
a worker makes; they are None outside a task). The suite runs this file: tests/e2e/test_logging.py.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from conveyor import App, get_task_logger


class JsonFormatter(logging.Formatter):
    """One JSON object per record, with the task's name and id when it was logged inside a task."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "task_name": getattr(record, "task_name", None),
            "task_id": getattr(record, "task_id", None),
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line)


LOG_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": JsonFormatter}},
    # conveyor's buffered handler: one write per batch of lines, flushed within 0.1 s and at exit.
    "handlers": {
        "stderr": {
            "class": "conveyor.logging.BufferedStreamHandler",
            "formatter": "json",
            "stream": "ext://sys.stderr",
        }
    },
    "root": {"level": "INFO", "handlers": ["stderr"]},
}

app = App("json-logs", log_config=LOG_CONFIG)
logger = get_task_logger(__name__)


@app.task
def ship(order_id: int) -> str:
    """Log one line inside the task; the worker logs its own "succeeded" line after it."""
    logger.info("shipping order %s", order_id)
    return f"order {order_id} shipped"
