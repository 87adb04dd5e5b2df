"""adelay's EVALSHA, packed by conveyor (brokers/redis/enqueue.py, aio.py): byte for byte what hiredis packs.

The async producer packs enqueue.lua's call itself (a queue's part once, a message's part per call)
instead of through hiredis, whose ``sprintf`` per argument cost a sixth of an ``adelay``. Whatever the
message (a generated or an explicit id, non-ASCII ids and keys, an eta, a key, every priority), the
bytes must be the command hiredis would send for the same ARGV as :func:`enqueue_args` lists it.
"""

from __future__ import annotations

import hashlib

import hiredis
import pytest

from conveyor.brokers.base import Envelope
from conveyor.brokers.redis.aio import AsyncRedis
from conveyor.brokers.redis.connection import load_script_source
from conveyor.brokers.redis.enqueue import enqueue_args, packed_enqueue_one
from conveyor.brokers.redis.keys import queue_keys
from conveyor.message import new_id

ENVELOPES = [
    Envelope(new_id(), "default", b'{"task":"t","args":[1]}', 0, None, None, explicit_id=False),
    Envelope(new_id(), "default", b"x" * 70_000, 9, None, None, explicit_id=False),
    Envelope(new_id(), "default", b"{}", 4, 1_900_000_000.25, None, explicit_id=False),
    Envelope(new_id(), "default", b"{}", 0, None, "r\u00e9cu-42", explicit_id=False),
    Envelope("commande-\u00e9t\u00e9-7", "default", b"{}", 0, None, None, explicit_id=True),
    Envelope("mine", "default", b"", 3, 1.5, "k", explicit_id=True),
]


@pytest.mark.parametrize("envelope", ENVELOPES, ids=range(len(ENVELOPES)))
def test_a_packed_enqueue_is_the_command_hiredis_packs(envelope: Envelope) -> None:
    aio = AsyncRedis(
        "redis://127.0.0.1:1/0",
        "redis://127.0.0.1:1/0",
        retry_for=1,
        socket_timeout=1,
        connect_timeout=1,
        max_block=1,
        scripts={"enqueue": load_script_source("enqueue")},
    )
    keys = queue_keys("p\u00e4ck", envelope.queue)
    head = aio.script_head("enqueue", keys.enqueue_keys, [keys.message], 6)
    # A generated id is its own attempt (None); an explicit one takes random bytes, as the caller draws them.
    attempt = b"\x00\xffrandom" if envelope.explicit_id else None
    packed = packed_enqueue_one(head, attempt, envelope)

    args = enqueue_args(keys, envelope.id.encode() if attempt is None else attempt, [envelope])
    sha = hashlib.sha1(load_script_source("enqueue").encode()).hexdigest()
    expected = hiredis.pack_command(("EVALSHA", sha, len(keys.enqueue_keys), *keys.enqueue_keys, *args))  # type: ignore[arg-type]
    assert packed == expected
