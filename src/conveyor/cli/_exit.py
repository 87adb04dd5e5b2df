"""Leaving the process once a command is done, without the interpreter's teardown.

A normal exit (``sys.exit``) waits for non-daemon threads, runs the ``atexit`` functions (the logging
handlers' flush and close among them), flushes stdio, and then tears the interpreter down: it frees
every module and object one by one. That last step does nothing a finished process needs, and it cost
a stopped worker 0.2-0.8 s on a loaded machine (more than the rest of its stop: most e2e tests stop
a worker, and every command-line call pays it too). :func:`exit_now` does the first three and then
leaves with ``os._exit``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
from collections.abc import Callable
from typing import NoReturn


def exit_now(code: object) -> NoReturn:
    """Exit with ``code`` as ``sys.exit(code)`` would (None: 0; a string is printed and exits 1), minus the teardown."""
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:
        print(code, file=sys.stderr)
        status = 1
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # logging.shutdown and the user's exit functions, as a normal exit runs them
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed, a broken pipe: a normal exit says nothing either
            stream.flush()
    os._exit(status)


def run(main: Callable[[], object]) -> NoReturn:
    """Run a click command in its standalone mode and leave through :func:`exit_now`."""
    try:
        main()
    except SystemExit as exc:
        exit_now(exc.code)
    exit_now(0)
