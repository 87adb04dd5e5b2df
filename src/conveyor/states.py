"""Task states and the result record the backend stores for each task id."""

from __future__ import annotations

import enum
from typing import Any

import msgspec


class State(enum.StrEnum):
    """Where a task is in its life. SUCCESS, FAILURE and REVOKED are final."""

    PENDING = "PENDING"  # enqueued (or unknown): no worker has reported on it yet
    STARTED = "STARTED"  # a worker is running it
    RETRY = "RETRY"  # an attempt failed; it waits for its next attempt
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    REVOKED = "REVOKED"  # revoked or expired before it ran; never runs

    @property
    def final(self) -> bool:
        """True once the task will not change state again."""
        return self in FINAL_STATES


FINAL_STATES = frozenset({State.SUCCESS, State.FAILURE, State.REVOKED})


class ErrorInfo(msgspec.Struct, omit_defaults=True):
    """An exception raised by one attempt, with its traceback."""

    type: str
    message: str
    traceback: str = ""
    attempt: int = 0


class ResultRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What the result backend stores for a task id (JSON-encoded).

    Times are Unix seconds. ``errors`` keeps every failed attempt, oldest first.
    """

    state: State
    value: Any = None
    error: ErrorInfo | None = None
    errors: list[ErrorInfo] = msgspec.field(default_factory=list)
    task: str = ""
    attempt: int = 0
    worker: str = ""
    started: float | None = None
    finished: float | None = None
    progress: float | None = None
    note: str = ""
    eta: float | None = None
    #: On a REVOKED record: stop the task even if it is running.
    terminate: bool = False


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(ResultRecord)


def encode_record(record: ResultRecord) -> bytes:
    """Encode a record for the backend."""
    return _encoder.encode(record)


def decode_record(data: bytes) -> ResultRecord:
    """Decode a record written by :func:`encode_record`."""
    return _decoder.decode(data)
