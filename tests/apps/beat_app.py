"""A periodic task for the beat end-to-end tests: one run every second.

``CONVEYOR_BROKER_URL`` picks the broker; ``CONVEYOR_BEAT_*`` shorten the lease for the test;
``BEAT_APP_CATCH_UP=1`` declares the entry with ``catch_up=True`` (every late slot fires).

``BEAT_APP_STOP_AFTER_CLAIM=<path>`` is a test hook: the first beat process to create ``<path>``
(the third slot it claims) writes its pid and the slot key there and SIGSTOPs itself right after
that successful claim, before it enqueues; the test continues it with SIGCONT. It makes the
window between a claim and the enqueue, a few microseconds, as long as the test wants.
"""

from __future__ import annotations

import datetime
import os
import signal
from pathlib import Path

from conveyor import App
from conveyor.backends.base import ResultBackend, Store
from conveyor.backends.redis import RedisResultBackend
from conveyor.backends.sqlite import SQLiteResultBackend

app = App("beat-e2e")

#: Successful slot claims before the hook pauses this process.
PAUSE_AT_CLAIM = 3


@app.periodic(every=datetime.timedelta(seconds=1), catch_up=os.environ.get("BEAT_APP_CATCH_UP") == "1")
@app.task(name="beat_tick")
def beat_tick() -> str:
    """Does nothing: the tests count the messages and results of its runs."""
    return "tick"


def _stop_after_claim(marker: Path) -> None:
    """Wrap the backends' ``claim`` so that one beat process pauses itself after its third slot claim."""
    claims = 0

    def wrap(cls: type[ResultBackend]) -> None:
        original = cls.claim

        def claim(self: Store, key: str, ttl: float) -> bool:
            nonlocal claims
            won = original(self, key, ttl)
            if won and key.startswith("beat:") and not key.endswith(":last"):
                claims += 1
                if claims == PAUSE_AT_CLAIM and _first_to_create(marker, f"{os.getpid()} {key}"):
                    os.kill(os.getpid(), signal.SIGSTOP)
            return won

        cls.claim = claim  # type: ignore[method-assign]

    for cls in (SQLiteResultBackend, RedisResultBackend):
        wrap(cls)


def _first_to_create(marker: Path, text: str) -> bool:
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as out:
        out.write(text)
    return True


if os.environ.get("BEAT_APP_STOP_AFTER_CLAIM"):
    _stop_after_claim(Path(os.environ["BEAT_APP_STOP_AFTER_CLAIM"]))
