"""Logging in worker and beat processes: every line with time, level and process, task lines with the task.

What ``conveyor worker`` and ``conveyor beat`` do before they start (:func:`configure`):

1. Every ``LogRecord`` made in the process gets ``task_name`` and ``task_id`` (None outside a task),
   read from the context the worker sets around each task: per thread on the thread pool, per
   coroutine on the asyncio pool. A record factory does it, so every handler sees the fields,
   including those of the user's own logging configuration (a JSON formatter can emit them).
2. ``warnings.warn`` goes through logging (the ``py.warnings`` logger, one line per warning), so a
   task's warning gets the same format and the task's name and id.
3. Handlers: the app's own logging setup if it has one (``App(log_config={...})``, a
   :func:`logging.config.dictConfig` dict, or a function decorated with ``@app.on_setup_logging``),
   else conveyor's: the root logger at ``--loglevel`` (so the user's ``logging.getLogger(__name__)``
   lines appear) with one :class:`BufferedStreamHandler` on stderr and :class:`LineFormatter`.

Why a buffered handler (``logbuffer.py``): a worker logs one INFO line per task, thousands per
second, and a flush per line is a system call per line. See docs/logging.md.
"""

from __future__ import annotations

import logging
import logging.config
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from conveyor.context import context_or_none
from conveyor.errors import ConfigurationError
from conveyor.logbuffer import BufferedStreamHandler, flush_all

if TYPE_CHECKING:
    from conveyor.app import App

__all__ = [
    "FORMAT",
    "BufferedStreamHandler",
    "LineFormatter",
    "LoggingSetup",
    "capture_warnings",
    "configure",
    "flush_all",
    "get_task_logger",
    "install_task_fields",
    "quick_log",
]

#: conveyor's line: ``2026-11-30 20:41:22,123 INFO    [conveyor-child-0 4242] shop.tasks.add[3f…]: message``.
#: ``%(task)s`` is ``name[id]: `` inside a task and empty outside (see :class:`LineFormatter`).
FORMAT = "%(asctime)s %(levelname)-7s [%(processName)s %(process)d] %(task)s%(message)s"

#: A function that sets up the process's logging instead of conveyor, given the level name (``INFO``...).
LoggingSetup = Callable[[str], None]


def get_task_logger(name: str) -> logging.Logger:
    """The logger to use in a task module (``logger = get_task_logger(__name__)``).

    A plain :class:`logging.Logger`: inside a worker, every record made while a task runs carries
    ``task_name`` and ``task_id`` whatever logger made it, so ``logging.getLogger(__name__)`` works
    just as well; this name is for those who know it from Celery.
    """
    return logging.getLogger(name)


def quick_log(logger: logging.Logger, level: int, msg: str, *args: object) -> None:
    """Log like ``logger.log(level, msg, *args)``, at a fraction of the CPU: for lines logged once per task.

    ``Logger.log`` walks the stack (``findCaller``) for ``pathname``/``lineno``/``funcName``, and
    ``LogRecord()`` recomputes per record what does not change in a process (the file's base name and
    module, the pid: a system call); here the record is a real ``LogRecord`` with every attribute the
    standard one has, those fields naming this function and taken from a per-process template (see
    :class:`_QuickRecords`). The record is then handled like any other (filters, handlers, propagation).
    With a record factory that is not conveyor's (a user's), the standard ``makeRecord`` path is used.

    With conveyor's own set-up untouched (:func:`default_setup`: the record would reach exactly one
    handler, a :class:`BufferedStreamHandler` with a :class:`LineFormatter` of :data:`FORMAT`, through
    no filter), no record is made at all: the same line is written straight into the handler's buffer
    (:func:`_direct_handler` says when; ``docs/logging.md``).
    """
    if logger.isEnabledFor(level):
        if logging.getLogRecordFactory() is _our_factory:
            handler = _direct_handler(logger, level)
            if handler is not None:
                formatter: LineFormatter = handler.formatter  # type: ignore[assignment]  # checked exactly
                handler.emit_line(formatter.line(level, msg % args if args else str(msg)), level)
                return
            record = _quick.make(logger.name, level, msg, args)
        else:
            record = logger.makeRecord(logger.name, level, __file__, 0, msg, args, None, "quick_log")
        logger.handle(record)


def _direct_handler(logger: logging.Logger, level: int) -> BufferedStreamHandler | None:
    """The one handler a record of ``logger`` at ``level`` would reach, when the line can skip the record.

    That is: no filter on ``logger``, it is not disabled, and the loggers it propagates through hold
    exactly one handler in all, a :class:`BufferedStreamHandler` (exactly) without filters whose level
    lets the record through, formatting with a :class:`LineFormatter` (exactly) of :data:`FORMAT` and
    the default date format. Anything else (a user's handler or filter, dictConfig) gets a real record.
    """
    if logger.filters or logger.disabled:
        return None
    found: logging.Handler | None = None
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            if found is not None:
                return None
            found = handler
        current = current.parent if current.propagate else None
    if type(found) is not BufferedStreamHandler or found.filters or level < found.level:
        return None
    formatter = found.formatter
    if type(formatter) is not LineFormatter or not formatter.direct:
        return None
    return found


class _QuickRecords:
    """Builds ``LogRecord`` objects from a template of the attributes that stay the same in a process.

    The template is the ``__dict__`` of a record made the standard way (so a future Python's new
    attributes are carried too), remade on first use after a fork (pid, process name).
    """

    def __init__(self) -> None:
        self._template: dict[str, Any] | None = None
        self._process: str | None = None
        self._start = 0.0

    def reset(self) -> None:
        """Forget the template (after a fork: the pid and process name changed)."""
        self._template = None
        self._process = None

    def process(self) -> str:
        """``[processName pid] `` as :data:`FORMAT` writes it for a record made in this process now."""
        if self._process is None:
            template = self._template if self._template is not None else self._build()
            self._process = f"[{template['processName']} {template['process']}] "
        return self._process

    def _build(self) -> dict[str, Any]:
        standard = logging.LogRecord("", logging.INFO, __file__, 0, "", (), None, "quick_log")
        template = dict(vars(standard))
        for name in ("name", "msg", "args", "levelno", "levelname", "created", "msecs", "relativeCreated"):
            template.pop(name)
        template.pop("thread", None), template.pop("threadName", None), template.pop("taskName", None)
        self._start = standard.created - standard.relativeCreated / 1000.0
        self._template = template
        return template

    def make(self, name: str, level: int, msg: str, args: tuple[object, ...]) -> logging.LogRecord:
        template = self._template if self._template is not None else self._build()
        record = logging.LogRecord.__new__(logging.LogRecord)
        fields = record.__dict__
        fields.update(template)
        now_ns = time.time_ns()
        created = now_ns / 1e9
        fields["name"], fields["msg"], fields["args"] = name, msg, args
        fields["levelno"], fields["levelname"] = level, logging.getLevelName(level)
        fields["created"], fields["msecs"] = created, (now_ns % 1_000_000_000) // 1_000_000 + 0.0
        fields["relativeCreated"] = (created - self._start) * 1000.0
        if logging.logThreads:
            fields["thread"], fields["threadName"] = threading.get_ident(), threading.current_thread().name
        else:
            fields["thread"] = fields["threadName"] = None
        if "taskName" in _STANDARD_FIELDS:  # Python 3.12+: the asyncio task's name
            fields["taskName"] = _asyncio_task_name()
        ctx = context_or_none()
        fields["task_name"], fields["task_id"] = (None, None) if ctx is None else (ctx.task, ctx.id)
        return record


def _asyncio_task_name() -> str | None:
    asyncio = sys.modules.get("asyncio")
    if asyncio is None or not getattr(logging, "logAsyncioTasks", True):
        return None
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running loop here
        return None
    return None if task is None else task.get_name()


_STANDARD_FIELDS = frozenset(vars(logging.LogRecord("", logging.INFO, "", 0, "", (), None)))
_quick = _QuickRecords()


# -- task fields on every record -----------------------------------------------------------------------


def install_task_fields() -> None:
    """Make every ``LogRecord`` carry ``task_name`` and ``task_id`` (None outside a task); idempotent.

    The factory wraps the one in place (the standard ``LogRecord`` unless someone set another).
    """
    global _our_factory
    current = logging.getLogRecordFactory()
    if getattr(current, "_conveyor_task_fields", False):
        return
    make = current

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        ctx = context_or_none()
        if ctx is None:
            record.task_name = record.task_id = None
        else:
            record.task_name, record.task_id = ctx.task, ctx.id
        return record

    factory._conveyor_task_fields = True  # type: ignore[attr-defined]
    # Only over the standard factory may quick_log build records itself (it then adds the same fields).
    _our_factory = factory if make is logging.LogRecord else None
    logging.setLogRecordFactory(factory)


_our_factory: Callable[..., logging.LogRecord] | None = None


# -- warnings through logging ---------------------------------------------------------------------------


def capture_warnings() -> None:
    """Send ``warnings.warn`` to the ``py.warnings`` logger as one line (``UserWarning: text (file.py:12)``).

    As :func:`logging.captureWarnings`, but without the source line and the trailing newline that
    ``warnings.formatwarning`` adds, which would split a warning over three lines of the log. A warning
    written to an explicit ``file`` still goes there. Which warnings show is still the ``warnings``
    filters' business (by default, each one once per place that warns).
    """
    if getattr(warnings.showwarning, "_conveyor", False):
        return
    original = warnings.showwarning
    warnings_log = logging.getLogger("py.warnings")

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        if file is not None:
            original(message, category, filename, lineno, file, line)
        else:
            warnings_log.warning("%s: %s (%s:%s)", category.__name__, message, filename, lineno)

    show._conveyor = True  # type: ignore[attr-defined]
    warnings.showwarning = show


# -- the line --------------------------------------------------------------------------------------------


class LineFormatter(logging.Formatter):
    """:data:`FORMAT` by default, with ``%(task)s`` filled and the time text made once per second.

    ``%(task)s`` is ``"name[id]: "`` for a record made inside a task, else empty. ``asctime`` keeps the
    standard ``2026-11-30 20:41:22,123`` form, but ``time.strftime`` runs once per second, not per line.
    """

    def __init__(self, fmt: str = FORMAT, datefmt: str | None = None) -> None:
        super().__init__(fmt, datefmt)
        self._second: tuple[int, str] = (-1, "")
        self._uses_time = self.usesTime()
        #: conveyor's own line: :meth:`line` may build it without a record (see :func:`quick_log`).
        self.direct = fmt == FORMAT and datefmt is None

    def line(self, level: int, message: str) -> str:
        """The line :meth:`format` makes of a record logged now at ``level`` with ``message`` (no traceback).

        Only for :data:`FORMAT` (``direct``): the process fields come from the quick records' per-process
        template, the task from the running task's context, as the record factory would set them.
        """
        now_ns = time.time_ns()
        second = now_ns // 1_000_000_000
        cached, text = self._second
        if second != cached:
            text = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second))
            self._second = (second, text)
        msecs = (now_ns % 1_000_000_000) // 1_000_000
        process = _quick.process()
        ctx = context_or_none()
        task = "" if ctx is None else f"{ctx.task}[{ctx.id}]: "
        return f"{text},{msecs:03d} {logging.getLevelName(level):<7} {process}{task}{message}"

    def format(self, record: logging.LogRecord) -> str:
        task_id = getattr(record, "task_id", None)
        record.task = f"{record.task_name}[{task_id}]: " if task_id is not None else ""  # type: ignore[attr-defined]
        if record.exc_info or record.exc_text or record.stack_info:
            return super().format(record)
        # Formatter.format's steps for a record without a traceback, in one call instead of five.
        record.message = record.getMessage()
        if self._uses_time:
            record.asctime = self.formatTime(record, self.datefmt)
        return self._fmt % record.__dict__ if self._fmt is not None else self.formatMessage(record)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        cached, text = self._second
        if second != cached:
            text = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second))
            self._second = (second, text)
        return f"{text},{int(record.msecs):03d}"


os.register_at_fork(after_in_child=_quick.reset)  # the pid and process name change


# -- set-up ----------------------------------------------------------------------------------------------


def configure(app: App, level: str | None = None) -> None:
    """Set up logging for a worker or beat process of ``app`` (see the module docstring).

    Args:
        app: its ``log_config`` or ``@app.on_setup_logging`` function, if any, replaces conveyor's handlers.
        level: ``--loglevel`` as given on the command line, else None (the app's ``log_level`` setting).
            With ``log_config``, a level given here still sets the root logger's level.

    Raises:
        ConfigurationError: ``log_config`` that ``dictConfig`` refuses, naming why.
    """
    install_task_fields()
    capture_warnings()
    resolved = (level or app.settings.log_level).upper()
    if app.logging_setup is not None:
        app.logging_setup(resolved)
    elif app.log_config is not None:
        try:
            logging.config.dictConfig(app.log_config)
        except (ValueError, TypeError, AttributeError, ImportError) as exc:
            raise ConfigurationError(f"log_config of app {app.name!r} cannot be applied: {exc}") from exc
        if level is not None:
            logging.getLogger().setLevel(resolved)
    else:
        default_setup(resolved)


def default_setup(level: str) -> None:
    """conveyor's own: the root logger at ``level``, one buffered handler on stderr with :class:`LineFormatter`.

    The root logger's handlers are replaced (as Celery's worker does by default), and the ``conveyor``
    loggers propagate to it: their level is the root's.
    """
    handler = BufferedStreamHandler()
    handler.setFormatter(LineFormatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    ours = logging.getLogger("conveyor")
    ours.handlers.clear()
    ours.setLevel(logging.NOTSET)
    ours.propagate = True
    # The AMQP client logs every failed connection attempt at ERROR, several a second while conveyor retries;
    # conveyor reports an outage itself, once (and a dead broker at start-up in one line): pika's own lines
    # show at DEBUG only.
    logging.getLogger("pika").setLevel(logging.DEBUG if level == "DEBUG" else logging.CRITICAL)
