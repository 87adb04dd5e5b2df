"""Typed events: what a worker child tells its supervisor, and how a delivery ended.

The child sends these over its pipe; the supervisor reads them to count work, to know which
task runs where (hard time limits, terminate-revocation) and to retire a child. They are also
the task events a dashboard or an event stream reads: one vocabulary for all of them.
"""

from __future__ import annotations

import enum

import msgspec

from conveyor.tally import count


class Ended(enum.StrEnum):
    """How one delivery ended in this worker (not a task state: DEAD and RETURNED have no result)."""

    SUCCESS = "SUCCESS"  # ran and succeeded; result written, message acked
    FAILURE = "FAILURE"  # ran and failed for good (recorded FAILURE; acked or dead-lettered)
    RETRY = "RETRY"  # ran and failed; requeued for a later attempt
    REVOKED = "REVOKED"  # not run: expired or revoked
    DEAD = "DEAD"  # not run: undecodable, unsigned or unknown task; dead-lettered
    RETURNED = "RETURNED"  # given back to the queue uncounted (an outage, a stop): not processed
    ABANDONED = "ABANDONED"  # could not be settled; its lease expires and it runs again
    DUPLICATE = "DUPLICATE"  # not run: a redelivered copy of a task whose final result is already recorded

    @property
    def processed(self) -> bool:
        """Counts as a processed task in the worker's stats."""
        return self not in (Ended.RETURNED, Ended.DUPLICATE)

    @property
    def failed(self) -> bool:
        """Counts as a failed task in the worker's stats."""
        return self in (Ended.FAILURE, Ended.ABANDONED)


class TaskStarted(msgspec.Struct, tag=True, array_like=True):
    """A task started running (sent at once for a task with a hard time limit, else once it runs long).

    Carries what the supervisor needs to fail and ack the task itself if the child must be killed.
    """

    id: str
    task: str
    deadline: float | None  # Unix time of the hard time limit, None without one
    token: str
    queue: str
    priority: int
    deliveries: int
    attempt: int


class TaskRunning(msgspec.Struct, tag=True, array_like=True):
    """A task started that the supervisor does not watch (the asyncio pool: its child enforces limits itself).

    For the event log and nothing else: sent at once for a task with a hard time limit, else once it runs
    long; its end is counted in bulk like any unreported task's.
    """

    id: str
    task: str
    queue: str


class TaskFinished(msgspec.Struct, tag=True, array_like=True):
    """A task whose start was reported ended."""

    id: str
    task: str
    ended: Ended
    runtime: float


class Counts(msgspec.Struct, tag=True, array_like=True):
    """Tasks that ended without a start report, counted in bulk (one message per batch, not per task)."""

    processed: int
    failed: int


#: A received delivery, as a child notes it: id, queue, deliveries, Unix time.
Received = tuple[str, str, int, float]
#: A delivery that ended without a start report: id, task, how it ended, runtime, Unix time.
EndedTask = tuple[str, str, Ended, float, float]


class Happened(msgspec.Struct, tag=True, array_like=True):
    """What a child's tasks did since its last report, for the event log and the metrics (sent with the counts).

    ``payload`` is ``[received, ended]`` already encoded (:func:`happened`): the supervisor appends it
    to the event log as it is, without building a record per task (the log's readers expand it, see
    ``conveyor/eventlog.py``). ``counts`` are its counter increments (tally.py), counted by the child in
    bulk, so the supervisor only adds them up for its Prometheus metrics and the engine's counters: it
    never decodes the payload. Only sent when the app publishes events or serves metrics. A task whose
    start was reported ends in a TaskFinished instead.
    """

    payload: bytes
    counts: dict[str, float] = {}


_payload_encoder = msgspec.msgpack.Encoder()
_payload_decoder = msgspec.msgpack.Decoder(tuple[list[Received], list[EndedTask]])


def happened(received: list[Received], ended: list[EndedTask]) -> Happened:
    """The report of these received and ended deliveries, with their counts."""
    return Happened(_payload_encoder.encode((received, ended)), count(received, ended))


def unpack(report: Happened) -> tuple[list[Received], list[EndedTask]]:
    """The received and ended deliveries of a report."""
    return _payload_decoder.decode(report.payload)


class Retiring(msgspec.Struct, tag=True, array_like=True):
    """The child stops taking work and exits once idle (a per-child limit was reached)."""

    reason: str


ChildEvent = TaskStarted | TaskRunning | TaskFinished | Counts | Happened | Retiring

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(ChildEvent)


def encode_event(event: ChildEvent) -> bytes:
    """Encode an event for the child's pipe (``Connection.send_bytes``)."""
    return _encoder.encode(event)


def decode_event(data: bytes) -> ChildEvent:
    """Decode an event written by :func:`encode_event`."""
    return _decoder.decode(data)
