"""conveyor.logging's pieces, in process: task fields, the quick record, the line, the buffered handler, the hooks.

The worker's own output is tested end to end in tests/e2e/test_logging.py.
"""

from __future__ import annotations

import io
import logging
import os
import re
import time
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor import App, ConfigurationError, TaskContext, get_task_logger
from conveyor.context import reset_context, set_context
from conveyor.logging import BufferedStreamHandler, LineFormatter, configure, install_task_fields, quick_log
from tests.conftest import wait_until


@pytest.fixture
def task_fields() -> Iterator[None]:
    """The task-field record factory installed for one test, the previous one restored after."""
    previous = logging.getLogRecordFactory()
    install_task_fields()
    yield
    logging.setLogRecordFactory(previous)


@pytest.fixture
def in_task() -> Iterator[TaskContext]:
    """Code run as inside the task ``shop.add[abc123]``."""
    ctx = TaskContext("abc123", "shop.add", 0, 0, 1, "default", {})
    token = set_context(ctx)
    yield ctx
    reset_context(token)


class Keep(logging.Handler):
    """Keeps the records it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def kept() -> Iterator[tuple[logging.Logger, Keep]]:
    log = logging.getLogger("tests.unit.logging")
    keep = Keep()
    log.addHandler(keep)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    yield log, keep
    log.removeHandler(keep)


def test_records_made_inside_a_task_carry_its_name_and_id_and_none_outside(
    task_fields: None, kept: tuple[logging.Logger, Keep]
) -> None:
    log, keep = kept
    log.info("outside")
    ctx = TaskContext("abc123", "shop.add", 0, 0, 1, "default", {})
    token = set_context(ctx)
    try:
        get_task_logger("tests.unit.logging").info("inside")
    finally:
        reset_context(token)
    outside, inside = keep.records
    assert (outside.task_name, outside.task_id) == (None, None)  # type: ignore[attr-defined]
    assert (inside.task_name, inside.task_id) == ("shop.add", "abc123")  # type: ignore[attr-defined]


def test_a_quick_record_is_a_standard_record_with_the_same_fields(
    task_fields: None, in_task: TaskContext, kept: tuple[logging.Logger, Keep]
) -> None:
    log, keep = kept
    log.info("task %s[%s] succeeded in %.4fs", "shop.add", "abc123", 0.5)
    quick_log(log, logging.INFO, "task %s[%s] succeeded in %.4fs", "shop.add", "abc123", 0.5)
    quick_log(log, logging.NOTSET + 1, "below the level: not made")
    standard, quick = keep.records
    assert type(quick) is logging.LogRecord
    assert set(vars(quick)) == set(vars(standard))
    timed = {"created", "msecs", "relativeCreated", "pathname", "filename", "module", "lineno", "funcName"}
    for name in set(vars(standard)) - timed:
        assert getattr(quick, name) == getattr(standard, name), name
    assert quick.getMessage() == "task shop.add[abc123] succeeded in 0.5000s"
    assert abs(quick.created - standard.created) < 1.0
    assert abs(quick.relativeCreated - standard.relativeCreated) < 1000.0
    assert 0 <= quick.msecs < 1000


def test_the_line_names_the_task_and_keeps_the_standard_time_form(task_fields: None, in_task: TaskContext) -> None:
    record = logging.getLogger("shop").makeRecord("shop", logging.WARNING, "f.py", 1, "careful %s", ("x",), None)
    line = LineFormatter().format(record)
    standard_time = logging.Formatter("%(asctime)s").format(record)
    assert line == f"{standard_time} WARNING [MainProcess {record.process}] shop.add[abc123]: careful x"
    outside = logging.LogRecord("shop", logging.INFO, "f.py", 1, "plain", (), None)  # no task fields at all
    assert LineFormatter().format(outside).endswith("] plain")


def test_the_buffered_handler_writes_in_batches_at_once_for_warnings_and_within_its_interval() -> None:
    stream = io.StringIO()
    handler = BufferedStreamHandler(stream, interval=0.05)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log = logging.getLogger("tests.unit.buffered")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.INFO)
    try:
        # INFO lines wait (for a moment), a WARNING writes them and itself at once, in order
        log.info("one")
        log.info("two")
        log.warning("three")
        assert stream.getvalue() == "INFO one\nINFO two\nWARNING three\n"
        # A lone INFO line is written by the flusher thread within the interval
        log.info("four")
        wait_until(lambda: "INFO four\n" in stream.getvalue(), 5, "the flusher to write the line")
        # flush() (logging.shutdown at exit, flush_all in a worker child) writes what waits
        handler.interval = 60.0
        log.info("five")
        handler.flush()
        assert stream.getvalue().endswith("INFO four\nINFO five\n")
    finally:
        handler.close()
        log.handlers.clear()
    assert handler._flusher is not None and not handler._flusher.is_alive()  # close() leaves no thread behind
    log.addHandler(handler)
    log.info("after close: written at once")
    log.removeHandler(handler)
    assert stream.getvalue().endswith("after close: written at once\n")


def test_the_buffered_handler_closes_at_once_under_its_lock_as_logging_shutdown_closes_it() -> None:
    # Given a handler whose flusher thread runs (a line waits on it, for up to 5 s)
    stream = io.StringIO()
    handler = BufferedStreamHandler(stream, interval=5.0)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.handle(logging.LogRecord("tests.unit.buffered", logging.INFO, "f.py", 1, "waiting", (), None))
    assert handler._flusher is not None and handler._flusher.is_alive()
    # When it is closed as logging.shutdown() closes every handler at exit: flush and close under its lock
    began = time.monotonic()
    handler.acquire()
    try:
        handler.flush()
        handler.close()
    finally:
        handler.release()
    # Then the line is written and the flusher is gone at once, not after the join's timeout (interval + 1 s):
    # a worker used to take a second longer to exit than to stop
    assert time.monotonic() - began < 2.5
    assert stream.getvalue() == "waiting\n"
    assert not handler._flusher.is_alive()


def test_log_config_must_be_a_dict_and_an_app_takes_one_logging_set_up() -> None:
    with pytest.raises(ConfigurationError, match=r"log_config must be a logging\.config\.dictConfig dict"):
        App("x", broker="memory://", log_config="logging.ini")  # type: ignore[arg-type]
    app = App("x", broker="memory://", log_config={"version": 1})
    with pytest.raises(ConfigurationError, match="has a logging set-up already"):
        app.on_setup_logging(lambda level: None)


def test_configure_calls_the_apps_own_set_up_with_the_level_and_refuses_a_bad_log_config(
    task_fields: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # configure() routes warnings to logging
    app = App("x", broker="memory://")
    levels: list[str] = []

    @app.on_setup_logging
    def setup(level: str) -> None:
        levels.append(level)

    configure(app, "debug")
    configure(app, None)
    assert levels == ["DEBUG", "INFO"]
    bad: dict[str, Any] = {"version": 1, "handlers": {"h": {"class": "no.such.Handler"}}}
    with pytest.raises(ConfigurationError, match="log_config of app 'y' cannot be applied: Unable to configure"):
        configure(App("y", broker="memory://", log_config=bad), None)


class Anything(logging.Filter):
    """A filter that lets every record through (its presence alone sends quick_log the record way)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return True


@pytest.mark.parametrize("inside", [False, True])
def test_a_line_written_without_a_record_is_the_line_a_record_makes(
    task_fields: None, inside: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import conveyor.logging as ours

    made: list[str] = []
    make = ours._quick.make

    def counting(name: str, level: int, msg: str, args: tuple[object, ...]) -> logging.LogRecord:
        made.append(msg)
        return make(name, level, msg, args)

    monkeypatch.setattr(ours._quick, "make", counting)
    # Given conveyor's own set-up (one BufferedStreamHandler with a LineFormatter, on a parent logger)
    stream = io.StringIO()
    handler = BufferedStreamHandler(stream, interval=60.0)
    handler.setFormatter(LineFormatter())
    parent, log = logging.getLogger("tests.direct"), logging.getLogger("tests.direct.worker")
    parent.handlers[:], parent.propagate = [handler], False
    parent.setLevel(logging.INFO)
    ctx = TaskContext("abc123", "shop.add", 0, 0, 1, "default", {})
    token = set_context(ctx) if inside else None
    try:
        # When the per-task line goes the direct way, then (a filter on the logger) the record way
        quick_log(log, logging.INFO, "task %s[%s] succeeded in %.4fs", "shop.add", "abc123", 0.5)
        assert made == []  # no record made
        log.addFilter(Anything())
        quick_log(log, logging.INFO, "task %s[%s] succeeded in %.4fs", "shop.add", "abc123", 0.5)
        quick_log(log, logging.DEBUG, "below the level: nothing")
        handler.flush()
    finally:
        if token is not None:
            reset_context(token)
        log.filters.clear()
        parent.handlers.clear()
        handler.close()
    assert len(made) == 1
    # Then both lines are the same but for the time (to the millisecond) they were made
    direct, recorded = stream.getvalue().splitlines()
    assert direct[23:] == recorded[23:]
    task = "shop.add[abc123]: " if inside else ""
    assert recorded[23:] == f" INFO    [MainProcess {os.getpid()}] {task}task shop.add[abc123] succeeded in 0.5000s"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}", direct[:23])
    assert abs(time.mktime(time.strptime(direct[:19], "%Y-%m-%d %H:%M:%S")) - time.time()) < 5


def test_a_user_handler_or_format_gets_a_real_record(task_fields: None) -> None:
    # Given the buffered handler with another format, and beside it a handler of the user's
    stream = io.StringIO()
    handler = BufferedStreamHandler(stream, interval=60.0)
    handler.setFormatter(LineFormatter("%(levelname)s %(funcName)s %(message)s"))
    keep = Keep()
    log = logging.getLogger("tests.direct.other")
    log.handlers[:], log.propagate = [handler], False
    log.setLevel(logging.INFO)
    try:
        quick_log(log, logging.INFO, "one %s", 1)
        log.addHandler(keep)
        quick_log(log, logging.INFO, "two %s", 2)
        handler.flush()
    finally:
        log.handlers.clear()
        handler.close()
    # Then each line was made from a record (its fields are there), and the user's handler got its record
    assert stream.getvalue() == "INFO quick_log one 1\nINFO quick_log two 2\n"
    assert [r.getMessage() for r in keep.records] == ["two 2"]
