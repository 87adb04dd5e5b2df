"""What the beat tests share: a wall clock in the test's hands, and the slots the broker holds.

Beat decides from its clock alone which slots are due, so the tests move a :class:`Clock` instead
of sleeping, and count what reached the broker per slot with :func:`fired_slots`.
"""

from __future__ import annotations

import datetime
from collections import Counter
from collections.abc import Iterable

from conveyor import App
from conveyor.message import decode
from conveyor.scheduler.beat import Beat
from conveyor.signing import unframe

T0 = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC, a multiple of 10 s


class Clock:
    """A wall clock the test moves."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def tick_at(clock: Clock, instants: Iterable[float], *beats: Beat) -> None:
    """At each instant in turn, move the clock there and tick every beat once (in the order given)."""
    for now in instants:
        clock.now = now
        for beat in beats:
            beat.tick()


def fired_slots(app: App) -> Counter[str]:
    """Every message waiting in the default queue, counted by the beat slot it was sent for."""
    deliveries = app.broker.reserve(["default"], 10_000, owner="test", lease=60)
    for delivery in deliveries:
        app.broker.nack(delivery)
    return Counter(decode(unframe(d.body)).headers["beat_slot"] for d in deliveries)


def iso(offset: float) -> str:
    """The ISO name of the slot ``offset`` seconds after :data:`T0` (as ``beat_slot`` headers carry it)."""
    return datetime.datetime.fromtimestamp(T0 + offset, datetime.UTC).isoformat()
