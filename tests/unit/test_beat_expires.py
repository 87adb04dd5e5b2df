"""A periodic entry's ``expires`` counts from its slot (docs/beat.md).

A call's ``expires=`` number now means seconds from now (task.py), so beat hands it an aware moment.
"""

from __future__ import annotations

import datetime

from conveyor import App
from conveyor.scheduler.beat import Beat
from tests.beat_clock import T0, Clock, tick_at


def test_beat_sends_the_slot_plus_expires_as_the_messages_expiry() -> None:
    app = App("beat-expires", broker="memory://", beat_lease=2.0, beat_interval=0.5, beat_grace=30.0)

    @app.periodic(every=datetime.timedelta(seconds=10), expires=25)
    @app.task(name="tick")
    def tick() -> None: ...

    clock = Clock(T0 - 5)
    tick_at(clock, [T0 - 5, T0 + 0.5], Beat(app, clock=clock))  # the slot T0 comes due: fired
    [delivery] = app.broker.reserve(["default"], 10, owner="test", lease=30, timeout=0.0)
    assert app.codec.decode(delivery.body).expires == T0 + 25
    app.close()
