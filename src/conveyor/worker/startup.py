"""The start-up check: a worker whose broker or result backend does not answer exits, it does not say "ready".

A URL that points nowhere (``redis://localhost:1``), a SQLite path that cannot be opened, RabbitMQ on the
wrong port or with the wrong password: these are configuration mistakes, and retrying them forever
behind a "ready" line hides them (issue 14, friction 3). So before it starts any child, the worker
pings its broker and its backend, each in a thread of its own, for at most ``startup_timeout``
seconds, and raises :class:`~conveyor.errors.BrokerUnavailable` naming the one that did not answer.

The main thread only waits on an event, so Ctrl-C (SIGINT) during the check interrupts it at once; the
ping threads are daemons and die with the process. A broker that goes away *later* is another
matter: the worker keeps retrying it (``worker/outage.py``), because that is an outage, not a mistake.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from conveyor.app import App
from conveyor.errors import BrokerError, BrokerUnavailable
from conveyor.settings import redact_text, redact_url

#: Seconds between two pings of a broker that answered with an error (it may be restarting).
RETRY_EVERY = 0.2


class _Ping:
    """Pings in a daemon thread until one answers or ``deadline`` (monotonic) passes; keeps the last error."""

    def __init__(self, what: str, url: str, call: Callable[[], None], deadline: float, done: threading.Event) -> None:
        self.what, self.url, self.deadline = what, url, deadline
        self.ok = False
        self.ended = False
        #: The last error a ping raised, for the message (a broker that answered with an error, say).
        self.error: BaseException | None = None
        self._call, self._done = call, done
        threading.Thread(target=self._run, name=f"conveyor-startup-{what}", daemon=True).start()

    def _run(self) -> None:
        try:
            while True:
                try:
                    self._call()
                except BrokerError as exc:  # maybe a restart or a short outage: ping again until the deadline
                    self.error = exc
                    if time.monotonic() + RETRY_EVERY >= self.deadline:
                        return
                    time.sleep(RETRY_EVERY)
                else:
                    self.ok = True
                    return
        except BaseException as exc:  # not an outage (a bad URL, a bug): reported at once by the waiting thread
            self.error = exc
        finally:
            self.ended = True
            self._done.set()


def check_reachable(app: App, timeout: float) -> None:
    """Return once the app's broker and result backend both answered, within ``timeout`` seconds.

    A broker that answers with an error (refused, restarting) is pinged again until the time is up, so
    a worker restarted during a short outage still starts.

    Raises:
        BrokerUnavailable: one of them did not answer in time (the message names which, its URL with
            the password masked, and the last error it gave).
        ConfigurationError: a URL its engine refuses (raised by building the broker or backend).
    """
    done = threading.Event()
    deadline = time.monotonic() + timeout
    broker_url, backend_url = app.settings.broker_url, app.settings.result_url

    def both() -> None:  # one URL, one server: one thread pings it as the backend, then as the broker
        app.backend.ping()
        app.broker.ping()

    if broker_url == backend_url:
        pings = [_Ping("broker", broker_url, both, deadline, done)]
    else:
        pings = [
            _Ping("broker", broker_url, lambda: app.broker.ping(), deadline, done),
            _Ping("result backend", backend_url, lambda: app.backend.ping(), deadline, done),
        ]
    while not all(p.ended for p in pings) and time.monotonic() < deadline:
        if any(p.ended and not p.ok and not isinstance(p.error, BrokerError) for p in pings):
            break  # a bad URL or a bug: no use waiting for the other
        done.wait(min(max(deadline - time.monotonic(), 0.0), 0.1))
        done.clear()
    for ping in pings:
        if ping.ended and not ping.ok and ping.error is not None and not isinstance(ping.error, BrokerError):
            raise ping.error
    late = next((p for p in pings if not p.ok), None)
    if late is not None:
        why = "" if late.error is None else f": {redact_text(str(late.error))}"
        raise BrokerUnavailable(
            f"{late.what} {redact_url(late.url)} did not answer within {timeout:g} s at start-up{why}; "
            f"{_hint(late.url)} (the startup_timeout setting sets the wait)"
        ) from late.error


def _hint(url: str) -> str:
    if url.startswith("sqlite:"):
        return "check the path: its directory must exist and be writable"
    return "check the URL (host, port, credentials, database or vhost) and that the server runs"
