"""The message: conveyor's one wire format, versioned, its JSON codec, and the per-call options that fill it.

A message is a msgspec struct encoded as JSON. Brokers never look inside the body: they store
the bytes beside the few fields they route by (queue, priority, eta), so a message from a newer
or broken producer still reaches a worker, which can dead-letter it with the reason. Never pickle.

JSON has no ``inf`` or ``nan``, and msgspec writes them as ``null``: an argument or a result
holding one would arrive as None. Both are refused with an EncodeError naming where the value
sits (issue 11, item 13); the wire format stays plain JSON that any parser reads.
"""

from __future__ import annotations

import datetime
import math
import os
import time
from collections.abc import Mapping
from typing import Any, TypedDict

import msgspec

from conveyor.errors import DecodeError, EncodeError, MessageTooLarge

#: The wire format version this code writes and reads.
FORMAT_VERSION = 1

#: Lowest and highest priority; higher runs first.
MIN_PRIORITY = 0
MAX_PRIORITY = 9


class Message(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=False):
    """One task invocation on the wire.

    Times (``eta``, ``expires``, ``created``) are Unix timestamps in seconds.
    """

    v: int = FORMAT_VERSION
    id: str
    task: str
    args: list[Any] = msgspec.field(default_factory=list)
    kwargs: dict[str, Any] = msgspec.field(default_factory=dict)
    queue: str = "default"
    priority: int = 0
    eta: float | None = None
    expires: float | None = None
    #: Retries done so far: 0 on the first run.
    attempt: int = 0
    max_retries: int | None = None
    #: Idempotency key: a second enqueue with the same key is dropped while the first is pending.
    key: str | None = None
    parent_id: str | None = None
    root_id: str | None = None
    links: list[dict[str, Any]] = msgspec.field(default_factory=list)
    link_errors: list[dict[str, Any]] = msgspec.field(default_factory=list)
    chord: dict[str, Any] | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    created: float = 0.0
    #: The sender chose ``id`` (``task_id=``); omitted on the wire for a generated id.
    explicit_id: bool = False


class SendOptions(TypedDict, total=False):
    """Options of one call, for ``apply_async`` and ``message``.

    ``countdown``, ``eta`` and ``expires`` read times alike, as Celery does: a number or a
    ``timedelta`` is that long from now, an aware ``datetime`` is that moment; a naive datetime
    is refused (ambiguous), and so is a number that looks like a Unix timestamp.

    Attributes:
        countdown: run no sooner than this long from now.
        eta: run no sooner than this moment (or this long from now).
        expires: do not run after this moment (or this long from now); a task picked up later is
            recorded REVOKED.
        priority: 0-9 for this call.
        queue: queue for this call.
        key: idempotency key: while a task with this key is pending or running, the call enqueues
            nothing and returns the existing task's result handle.
        headers: user metadata, visible to the task as ``current_context().headers``.
        task_id: use this id instead of a fresh one.
        link: a signature (or a list, a chain...) started with the task's result when it succeeds.
        link_error: a signature (or a list) started with the task's id when it fails for good.
            (Both typed ``object``: this module imports nothing of conveyor but ``errors``; a
            value that is no signature is refused when the call is built.)
    """

    countdown: float | datetime.timedelta | None
    eta: float | datetime.timedelta | datetime.datetime | None
    expires: float | datetime.timedelta | datetime.datetime | None
    priority: int | None
    queue: str | None
    key: str | None
    headers: Mapping[str, str] | None
    task_id: str | None
    link: object
    link_error: object


def new_id() -> str:
    """A fresh message id: 32 hex characters (128 random bits), sortable by nothing in particular."""
    # os.urandom directly: a third of uuid.uuid4().hex's cost, on every enqueue (issue 6).
    return os.urandom(16).hex()


def now() -> float:
    """Wall-clock Unix time in seconds; the one clock messages and leases use."""
    return time.time()


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Message)


def encode(message: Message, max_size: int | None = None) -> bytes:
    """Encode a message to JSON bytes.

    Raises:
        EncodeError: an argument is not JSON-serializable; the error names which one.
        MessageTooLarge: the encoding is longer than ``max_size`` bytes.
    """
    try:
        body = _encoder.encode(message)
    except (TypeError, ValueError, OverflowError) as exc:
        raise _explain_encode_failure(message, exc) from exc
    if _NULL in body:  # only then can a non-finite float hide in it: the common path pays one bytes search
        _refuse_non_finite_fields(message)
    if max_size is not None and len(body) > max_size:
        raise MessageTooLarge(
            f"message for task {message.task!r} is {len(body)} bytes, over the limit of {max_size} bytes "
            "(max_message_size); pass a reference (a key, a URL) instead of the data"
        )
    return body


def decode(body: bytes) -> Message:
    """Decode JSON bytes into a message.

    Raises:
        DecodeError: the bytes are not a conveyor message of a version this code reads.
    """
    try:
        message = _decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise DecodeError(f"undecodable message: {exc}", raw=body) from exc
    if message.v > FORMAT_VERSION:
        raise DecodeError(f"message format v{message.v} is newer than this worker reads (v{FORMAT_VERSION})", raw=body)
    return message


def _explain_encode_failure(message: Message, exc: Exception) -> EncodeError:
    """Find the first argument that does not encode, so the error can name it."""
    candidates: list[tuple[str, Any]] = [(f"args[{i}]", value) for i, value in enumerate(message.args)]
    candidates += [(f"kwargs[{name!r}]", value) for name, value in message.kwargs.items()]
    for where, value in candidates:
        try:
            _encoder.encode(value)
        except (TypeError, ValueError, OverflowError) as inner:
            return EncodeError(
                f"task {message.task!r}: argument {where} of type {type(value).__name__} cannot be sent "
                f"as JSON ({inner}); pass plain data (str, int, float, bool, None, list, dict)",
                argument=where,
            )
    return EncodeError(f"task {message.task!r}: message does not encode: {exc}")


#: msgspec writes inf and nan as this; a body without it holds neither.
_NULL = b"null"
_NO_NON_FINITE = "which JSON cannot carry (it would arrive as null); send it as a string (e.g. 'inf') or None"


#: The message fields that can hold a float: user data (arguments, workflow links) and the times.
_FLOAT_FIELDS = ("args", "kwargs", "links", "link_errors", "chord", "eta", "expires")
_SCALARS = frozenset({str, int, bool, type(None)})


def _refuse_non_finite_fields(message: Message) -> None:
    """Raise EncodeError naming the first inf or nan in the message (an argument, say ``args[1]['x']``)."""
    for field in _FLOAT_FIELDS:
        found = _first_non_finite(getattr(message, field))
        if found is not None:
            where, bad = field + found[0], found[1]
            kind = "argument" if field in ("args", "kwargs") else "field"
            raise EncodeError(f"task {message.task!r}: {kind} {where} is {bad!r}, {_NO_NON_FINITE}", argument=where)


def _first_non_finite(value: Any, plain: bool = False) -> tuple[str, float] | None:
    """The first inf or nan in ``value``, depth first, with its path below it (``"[1]['x']"``); or None.

    Containers are walked as they are; any other object msgspec encodes (a dataclass, a Struct)
    is walked in its plain form (``plain``: already converted, nothing left to convert).
    """
    if type(value) in _SCALARS:
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else ("", value)
    pairs: Any
    if isinstance(value, dict):
        pairs, show = value.items(), repr
    elif isinstance(value, list | tuple | set | frozenset):
        pairs, show = enumerate(value), str
    else:
        return None if plain else _first_non_finite(msgspec.to_builtins(value), plain=True)
    for key, item in pairs:
        found = _first_non_finite(item, plain)
        if found is not None:
            return f"[{show(key)}]{found[0]}", found[1]
    return None


def encode_value(value: Any) -> bytes:
    """Encode a task's return value (or any JSON-able data) for the result backend.

    Raises:
        EncodeError: the value is not JSON-serializable, or holds an inf or a nan (the error says where).
    """
    try:
        body = _encoder.encode(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise EncodeError(f"value of type {type(value).__name__} cannot be stored as JSON: {exc}") from exc
    found = _first_non_finite(value) if _NULL in body else None
    if found is not None:
        where = "value" + found[0]
        raise EncodeError(f"result {where} is {found[1]!r}, {_NO_NON_FINITE}", argument=where)
    return body


def decode_value(data: bytes) -> Any:
    """Decode bytes written by :func:`encode_value`."""
    return msgspec.json.decode(data)
