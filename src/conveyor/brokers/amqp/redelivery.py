"""What the AMQP broker counts as a delivery, and when a delivery it holds has expired.

RabbitMQ marks ``redelivered`` every message a closed channel held, whether that channel was
running it (a worker crashed: count a delivery, so a poison message ends dead-lettered) or only
holding it (a prefetched batch-mate of the crashing task, a producer's scan whose connection
dropped: count nothing). The task's result record tells them apart: the worker writes STARTED
before it runs a task, and each copy carries, in ``x-conveyor-started``, the start it already
counted (:func:`start_to_count`).

A held delivery's lease is measured in this process's heartbeats as well as in seconds
(:func:`expired`), so a process stalled whole (a task holding the GIL stops every thread, the
heartbeat too) expires nothing when it wakes. docs/amqp.md, "Leases, heartbeats and dead workers".
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from conveyor.brokers.amqp.scan import Meta
from conveyor.brokers.base import REQUEUES_PER_DELIVERY as REQUEUES_PER_DELIVERY  # re-exported: amqp.py
from conveyor.brokers.base import Delivery
from conveyor.states import State, decode_record

if TYPE_CHECKING:
    from conveyor.backends.base import ResultBackend

#: Heartbeats (``extend`` calls) of this process after which a delivery they did not extend, and whose
#: lease ran out, has expired. A stall of the whole process stops the heartbeats too: it expires nothing.
MISSED_BEATS = 2
#: Seconds a reserve's polling loop may overshoot its sleep before it takes the process for stalled
#: (a task holding the GIL) and pushes every lease it holds by the stall.
STALL = 0.25
#: The ``started`` header of a copy counted while the result backend could not say whether it ran.
UNKNOWN_START = -1.0


@dataclasses.dataclass(slots=True)
class Held:
    """A delivery this process holds unacknowledged on its channel."""

    delivery: Delivery
    entry: Meta
    tag: int
    generation: int
    deadline: float  # time.monotonic()
    beat: int = 0  # the broker's heartbeat count when it was taken or last extended
    pushed: bool = False  # came by basic.deliver (a consumer), not by basic.get-ok: see AMQPBroker._ack_held


def expired(held: Held, now: float, beats: int) -> bool:
    """Whether ``held``'s lease ran out: its deadline passed and, once this process heartbeats
    (``beats`` > 0), ``MISSED_BEATS`` heartbeats went by without extending it."""
    if held.deadline > now:
        return False
    return beats == 0 or beats - held.beat >= MISSED_BEATS


def start_to_count(results: ResultBackend, entry: Meta) -> float | None:
    """The start time of ``entry``'s task if it started and no copy counted that start yet, else None.

    A result backend that cannot answer counts the delivery (the conservative side: a poison
    message must still end dead-lettered).
    """
    try:
        raw = results.get(entry.id)
    except Exception:  # any backend failure: count, as before this check existed
        return UNKNOWN_START
    if raw is None:
        return None
    record = decode_record(raw)
    if record.state.final:
        # Revoked while a worker held it (a terminated run, or a prefetched copy), or finished with its
        # ack lost (a child killed at its hard limit: the supervisor's ack cannot reach the child's
        # channel): count it, so the worker that takes it sees a redelivery and checks the record
        # instead of running the task again. Counted once: a copy that carries this mark counted it.
        mark = record.finished if record.finished is not None else UNKNOWN_START
        return None if mark == entry.started else mark
    if record.state is not State.STARTED or record.started is None or record.started == entry.started:
        return None
    return record.started


def counted_start(results: ResultBackend, entry: Meta) -> float | None:
    """The start a give-back counts (so a later crash of a copy that never ran does not count it again)."""
    try:
        raw = results.get(entry.id)
    except Exception:  # unknown: a later crash may count this start once more
        return entry.started
    record = None if raw is None else decode_record(raw)
    return entry.started if record is None or record.started is None else record.started
