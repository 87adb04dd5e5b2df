"""A periodic task for the beat end-to-end tests: one run every second.

``CONVEYOR_BROKER_URL`` picks the broker; ``CONVEYOR_BEAT_*`` shorten the lease for the test.
"""

from __future__ import annotations

import datetime

from conveyor import App

app = App("beat-e2e")


@app.periodic(every=datetime.timedelta(seconds=1))
@app.task(name="beat_tick")
def beat_tick() -> str:
    """Does nothing: the tests count the messages and results of its runs."""
    return "tick"
