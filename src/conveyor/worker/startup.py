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


class _Ping:
    """One ping, run in a daemon thread: its error, if it raised one, and whether it ended."""

    def __init__(self, what: str, url: str, call: Callable[[], None], done: threading.Event) -> None:
        self.what, self.url = what, url
        self.error: BaseException | None = None
        self.ended = False
        self._call, self._done = call, done
        threading.Thread(target=self._run, name=f"conveyor-startup-{what}", daemon=True).start()

    def _run(self) -> None:
        try:
            self._call()
        except BaseException as exc:  # reported by the waiting thread, whatever it is
            self.error = exc
        finally:
            self.ended = True
            self._done.set()


def check_reachable(app: App, timeout: float) -> None:
    """Return once the app's broker and result backend both answered, within ``timeout`` seconds.

    Raises:
        BrokerUnavailable: one of them did not answer in time, or failed (the message names which,
            its URL with the password masked, and the error).
        ConfigurationError: a URL its engine refuses (raised by building the broker or backend).
    """
    done = threading.Event()
    broker_url, backend_url = app.settings.broker_url, app.settings.result_url

    def both() -> None:  # one URL, one server: one thread pings it as the backend, then as the broker
        app.backend.ping()
        app.broker.ping()

    if broker_url == backend_url:
        pings = [_Ping("broker", broker_url, both, done)]
    else:
        pings = [
            _Ping("broker", broker_url, lambda: app.broker.ping(), done),
            _Ping("result backend", backend_url, lambda: app.backend.ping(), done),
        ]
    deadline = time.monotonic() + timeout
    while not all(p.ended for p in pings):
        failed = next((p for p in pings if p.ended and p.error is not None), None)
        remaining = deadline - time.monotonic()
        if failed is not None or remaining <= 0:
            break
        done.wait(min(remaining, 0.1))
        done.clear()
    for ping in pings:
        if ping.ended and ping.error is not None:
            _raise(ping, timeout)
    late = [p for p in pings if not p.ended]
    if late:
        first = late[0]
        raise BrokerUnavailable(
            f"{first.what} {redact_url(first.url)} did not answer within {timeout:g} s at start-up; "
            f"{_hint(first.url)} (the startup_timeout setting sets the wait)"
        )


def _raise(ping: _Ping, timeout: float) -> None:
    error = ping.error
    if isinstance(error, BrokerError):
        raise BrokerUnavailable(
            f"{ping.what} {redact_url(ping.url)} is not usable at start-up: {redact_text(str(error))}; "
            + _hint(ping.url)
        ) from error
    assert error is not None
    raise error


def _hint(url: str) -> str:
    if url.startswith("sqlite:"):
        return "check the path: its directory must exist and be writable"
    return "check the URL (host, port, credentials, database or vhost) and that the server runs"
