"""Flow control: global rate limits and per-key concurrency limits, across every worker of a deployment.

``@app.task(rate_limit="100/m")``: at most 100 runs a minute, counted across all workers (not per
worker, as in Celery). Each run reserves the next token of a token bucket kept in the result backend
(``Store.take_token``, refilled on the server's clock); a task whose token is due later is given back
to the broker to run at that moment (:class:`~conveyor.middleware.Defer`) with the token noted in its
headers, so it holds no worker slot while it waits and is not asked again. The bucket holds a tenth
of a second of tokens (at least one), so a burst stays within 10% of the rate over one second.

``@app.task(concurrency_key=lambda user_id, **_: user_id, max_concurrency=1)``: at most N runs at once
per key (the function gets the task's arguments). A run holds one of N slot leases in the result
backend (``Store.acquire_lease``) for ``lease`` seconds, renewed by a thread of the worker process
every ``lease / 3`` seconds while it runs and released when it ends; a worker killed -9 stops renewing
and its slot lapses with its lease. A task that finds no slot free is given back for a short,
jittered delay.

The :class:`FlowControl` middleware owns the three options; tasks that use none pay nothing (its hooks are left
out of their plan, see ``middleware.py``).
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from conveyor.errors import ConfigurationError
from conveyor.middleware import Defer, Job, Middleware, Outcome

if TYPE_CHECKING:
    from conveyor.app import App
    from conveyor.task import BaseTask

log = logging.getLogger("conveyor.worker")

#: Header ``<due Unix time>@<attempt>``: when a deferred attempt's reserved rate-limit token is due (not asked twice).
RATE_HEADER = "conveyor-rate-due"
#: Seconds a run whose key has no free slot waits before it is tried again: drawn from this range.
BUSY_DELAY = (0.05, 0.5)
#: A rate limit's bucket holds this many seconds of tokens (and at least one).
BURST_SECONDS = 0.1

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*([smh]))?\s*$")
_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_rate(value: str | float | int) -> float:
    """Tokens a second of a ``rate_limit``: ``"100/s"``, ``"100/m"``, ``"5/h"``, or a number (per second).

    Raises:
        ConfigurationError: anything else, or a rate that is not positive.
    """
    if isinstance(value, bool):
        raise ConfigurationError(f"rate_limit must be like '100/s', '100/m' or '5/h', got {value!r}")
    if isinstance(value, int | float):
        rate = float(value)
    else:
        match = _RATE.match(str(value))
        if match is None:
            raise ConfigurationError(f"rate_limit must be like '100/s', '100/m' or '5/h', got {value!r}")
        rate = float(match.group(1)) / _UNIT[match.group(2)]
    if rate <= 0:
        raise ConfigurationError(f"rate_limit must be positive, got {value!r}")
    return rate


def check_concurrency(key: Callable[..., Any] | None, limit: int | None) -> None:
    """Both or neither of ``concurrency_key`` (a callable) and ``max_concurrency`` (>= 1).

    Raises:
        ConfigurationError: one without the other, a key that is not callable, a limit below 1.
    """
    if key is None and limit is None:
        return
    if key is None or not callable(key):
        raise ConfigurationError(
            f"max_concurrency needs concurrency_key=, a function of the task's arguments giving the key, got {key!r}"
        )
    if limit is None or isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigurationError(f"max_concurrency must be an int >= 1 with concurrency_key=, got {limit!r}")


class _Renewer:
    """Renews the slot leases this process holds every ``lease / 3`` seconds, from one daemon thread.

    A slot is renewed only while its job lives: a job dropped without reaching ``after_settle`` (a
    later ``before_run`` found the backend down, and the delivery was given back) lets its slot go.
    """

    def __init__(self, app: App) -> None:
        self.app = app
        self.held: dict[str, tuple[str, str, weakref.ref[Job]]] = {}  # job key -> (lease name, owner, job)
        self.lock = threading.Lock()
        self.pid = 0

    def add(self, job: Job, name: str, owner: str) -> None:
        with self.lock:
            self.held[owner] = (name, owner, weakref.ref(job))
            if self.pid != os.getpid():  # first use in this process (a forked child has no thread)
                self.pid = os.getpid()
                threading.Thread(target=self._run, name="conveyor-slot-leases", daemon=True).start()

    def pop(self, owner: str) -> tuple[str, str] | None:
        with self.lock:
            held = self.held.pop(owner, None)
        return None if held is None else (held[0], held[1])

    def _run(self) -> None:
        lease = self.app.settings.lease
        while True:
            time.sleep(lease / 3)
            with self.lock:
                held = list(self.held.values())
            for name, owner, job in held:
                try:
                    if job() is None:  # its job was dropped unsettled: free the slot now
                        self.pop(owner)
                        self.app.backend.release_lease(name, owner)
                    elif not self.app.backend.acquire_lease(name, owner, lease):
                        log.warning("concurrency slot %s was lost (not renewed in time)", name)
                except Exception:  # an outage: the next round tries again; the lease may lapse meanwhile
                    log.exception("could not renew concurrency slot %s", name)


class FlowControl(Middleware):
    """Global rate limits (``rate_limit``) and per-key concurrency limits (``concurrency_key``, ``max_concurrency``)."""

    options: ClassVar[frozenset[str]] = frozenset({"rate_limit", "concurrency_key", "max_concurrency"})

    def __init__(self, app: App) -> None:
        self.app = app
        self._renewer = _Renewer(app)

    def wants(self, task: BaseTask[Any, Any], hook: str) -> bool:
        options = task.options
        if hook == "after_settle":  # releases a concurrency slot
            return options.concurrency_key is not None
        return options.rate_limit is not None or options.concurrency_key is not None

    def before_run(self, job: Job) -> None:
        options = job.task.options
        if options.rate_limit is not None:
            self._take_token(job, parse_rate(options.rate_limit))
        if options.concurrency_key is not None:
            self._take_slot(job, options.concurrency_key, options.max_concurrency or 1)

    def after_settle(self, job: Job, outcome: Outcome) -> None:
        if job.task.options.concurrency_key is None:
            return
        held = self._renewer.pop(_job_key(job))
        if held is not None:
            self.app.backend.release_lease(*held)

    def _take_token(self, job: Job, rate: float) -> None:
        attempt = job.message.attempt
        due, _, for_attempt = job.message.headers.get(RATE_HEADER, "").partition("@")
        if due and for_attempt == str(attempt):  # this attempt reserved its token when it was deferred
            early = float(due) - time.time()
            if early <= 0.002:
                return
            raise Defer(early, f"rate limit {job.task.options.rate_limit}: back before its token was due")
        wait = self.app.backend.take_token(f"rate:{job.task.name}", rate, max(1.0, rate * BURST_SECONDS))
        if wait > 0:
            # The header names the attempt: a retry (the same headers, attempt + 1) takes a token of its own.
            token = {RATE_HEADER: f"{time.time() + wait!r}@{attempt}"}
            raise Defer(wait, f"rate limit {job.task.options.rate_limit}", token)

    def _take_slot(self, job: Job, key_of: Callable[..., Any], limit: int) -> None:
        message = job.message
        key = key_of(*message.args, **message.kwargs)
        owner = _job_key(job)
        lease = self.app.settings.lease
        for i in range(limit):
            name = f"concurrency:{job.task.name}:{key}:{i}"
            if self.app.backend.acquire_lease(name, owner, lease):
                self._renewer.add(job, name, owner)
                return
        raise Defer(random.uniform(*BUSY_DELAY), f"{limit} run(s) of key {key!r} already running")


def _job_key(job: Job) -> str:
    """One delivery of one task: a redelivered copy is another owner (its old slot lapses with its lease)."""
    return f"{job.id}:{job.delivery.token}"
