"""Outage: capped backoff and one log line per outage (not per attempt) for a dependency that is down.

The worker waits out a result backend or broker outage instead of handing tasks to their lease
(which counts a delivery, and after ``max_deliveries`` buries them as poison). While waiting it
retries with a backoff that doubles up to ``MAX_BACKOFF`` seconds; it says so once when the
outage starts and once when it ends.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("conveyor.worker")

#: Longest pause, in seconds, between two attempts while a dependency is down.
MAX_BACKOFF = 2.0
FIRST_BACKOFF = 0.1


class Outage:
    """The state of one dependency (``what``): up, or down since some time with a current backoff.

    Safe to share between threads: each caller keeps its own backoff, the log lines are shared.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._lock = threading.Lock()
        self._since: float | None = None

    @property
    def down(self) -> bool:
        """True between the first failure of an outage and the next success."""
        return self._since is not None

    def failed(self, exc: BaseException, doing: str) -> None:
        """An attempt failed: log it if it starts an outage."""
        with self._lock:
            if self._since is not None:
                return
            self._since = time.monotonic()
        log.warning("%s unavailable (%s): %s; retrying until it answers", self.what, doing, exc)

    def answered(self) -> None:
        """An attempt succeeded: log the end of the outage, if there was one."""
        if self._since is None:
            return
        with self._lock:
            since, self._since = self._since, None
        if since is not None:
            log.warning("%s is back after %.1fs", self.what, time.monotonic() - since)


def next_backoff(backoff: float) -> float:
    """The pause after ``backoff``: doubled, capped at MAX_BACKOFF."""
    return min(backoff * 2, MAX_BACKOFF)


def wait_until_up(probe: Callable[[], object], outage: Outage, keep_going: Callable[[], bool]) -> bool:
    """Call ``probe`` with capped backoff until it answers (True), or until ``keep_going()`` is false (False)."""
    from conveyor.errors import BrokerError

    backoff = FIRST_BACKOFF
    while keep_going():
        try:
            probe()
        except BrokerError as exc:
            outage.failed(exc, "probing")
            time.sleep(backoff)
            backoff = next_backoff(backoff)
            continue
        outage.answered()
        return True
    return False
