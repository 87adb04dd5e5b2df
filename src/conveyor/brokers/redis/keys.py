"""Every Redis key the Redis broker and result backend write, named in one place.

The layout is built for Redis Cluster: all keys of one queue share the hash tag ``{prefix:q:NAME}``
(one slot, so each Lua script touches one slot), global bookkeeping shares ``{prefix}``, and each
result has its own tag ``{prefix:r:ID}``, as has each lease, claim and value of the result backend
(``{prefix:lease:NAME}``, ``{prefix:claim:KEY}``, ``{prefix:kv:KEY}``, ``{prefix:g:KEY}``,
``{prefix:bucket:NAME}``: one key per operation).
``docs/redis.md`` describes every key; the script headers in
``scripts/`` say which keys each one touches.
"""

from __future__ import annotations

import dataclasses
import functools

#: Key prefix used when the URL carries no ``prefix=`` query parameter.
DEFAULT_PREFIX = "conveyor"


@dataclasses.dataclass(frozen=True, slots=True)
class QueueKeys:
    """The keys of one queue, all under the hash tag ``{prefix:q:NAME}``.

    Attributes:
        ready: ZSET id -> ``seq - priority * 2**48`` (lowest first: priority DESC, then FIFO).
        scheduled: ZSET id -> eta (Unix seconds).
        inflight: ZSET id -> lease deadline (server Unix seconds).
        dead: ZSET id -> time of death (server Unix seconds).
        seq: STRING counter for enqueue order and lease tokens.
        signal: LIST of wake-up tokens that blocked reserves BLPOP.
        message: prefix of the per-message HASH ``message + id``.
        registered: STRING marker, set once the queue is in the registry ``{prefix}:queues``. It
            lives in the queue's slot, so enqueue.lua sees at no cost when the server lost its data
            (the marker with it) and the caller must register the queue again.
    """

    ready: str
    scheduled: str
    inflight: str
    dead: str
    seq: str
    signal: str
    message: str
    registered: str
    seen: str

    @property
    def script_keys(self) -> tuple[str, str, str, str, str, str]:
        """The KEYS every per-queue script takes, in the order ``_common.lua`` names them."""
        return (self.ready, self.scheduled, self.inflight, self.dead, self.seq, self.signal)

    @property
    def enqueue_keys(self) -> tuple[str, str, str, str, str, str, str]:
        """The KEYS of enqueue.lua: the common ones and the registry marker."""
        return (*self.script_keys, self.registered)

    @property
    def clock_keys(self) -> tuple[str, str, str, str, str, str, str]:
        """The KEYS of reserve, recover and extend (the scripts that judge or extend leases): common ones + ``seen``."""
        return (*self.script_keys, self.seen)


@dataclasses.dataclass(frozen=True, slots=True)
class GlobalKeys:
    """Bookkeeping shared by all queues, under the hash tag ``{prefix}``.

    Attributes:
        queues: SET of every queue name ever enqueued to (stats, cancel, recover, release_owner,
            dead letters). Registered again whenever a queue's ``registered`` marker is missing.
        keys: HASH idempotency key -> claim ``<claimed_at_ms>|<holder>`` (see :func:`holder`).
        workers: ZSET worker id -> heartbeat expiry (server Unix seconds).
        workers_info: HASH worker id -> WorkerInfo JSON.
        scanned: STRING ``1`` (Redis Cluster only): the registry was rebuilt from the queues'
            ``registered`` markers by a SCAN of every node. It lives beside the registry, so a node
            that loses the registry loses it too, and the next reader of the registry scans again.
    """

    queues: str
    keys: str
    workers: str
    workers_info: str
    scanned: str


@functools.lru_cache(maxsize=1024)
def queue_keys(prefix: str, queue: str) -> QueueKeys:
    """The keys of ``queue`` under ``prefix`` (cached: the hot path asks for them on every call)."""
    tag = f"{{{prefix}:q:{queue}}}"
    return QueueKeys(
        ready=f"{tag}:ready",
        scheduled=f"{tag}:scheduled",
        inflight=f"{tag}:inflight",
        dead=f"{tag}:dead",
        seq=f"{tag}:seq",
        signal=f"{tag}:signal",
        message=f"{tag}:m:",
        registered=f"{tag}:registered",
        seen=f"{tag}:seen",
    )


def wake_key(keys: QueueKeys, waiter: str) -> str:
    """The wake-up list of one reserving process (``waiter``) in the slot of the queue whose ``keys`` these are.

    A stopping worker child pushes a token to it to end its own blocked pop (``RedisBroker.stop_waiting``).
    """
    return keys.signal.removesuffix("signal") + f"wake:{waiter}"


def global_keys(prefix: str) -> GlobalKeys:
    """The global bookkeeping keys under ``prefix``."""
    tag = f"{{{prefix}}}"
    return GlobalKeys(
        queues=f"{tag}:queues",
        keys=f"{tag}:keys",
        workers=f"{tag}:workers",
        workers_info=f"{tag}:workers:info",
        scanned=f"{tag}:queues:scanned",
    )


def marker_pattern(prefix: str) -> str:
    """SCAN pattern of every queue's ``registered`` marker under ``prefix`` (glob characters escaped)."""
    escaped = "".join("\\" + c if c in "*?[]\\" else c for c in prefix)
    return f"{{{escaped}:q:*}}:registered"


def queue_of_marker(prefix: str, key: bytes) -> str:
    """The queue name of a ``registered`` marker key found by :func:`marker_pattern`."""
    head, tail = f"{{{prefix}:q:".encode(), b"}:registered"
    return key[len(head) : len(key) - len(tail)].decode()


def result_key(prefix: str, task_id: str) -> str:
    """STRING ``STATE\\nrecord`` with a PX ttl: the result record of one task."""
    return f"{{{prefix}:r:{task_id}}}"


def notify_key(prefix: str, task_id: str) -> str:
    """LIST holding one wake-up token once the task's result is final (same slot as its record)."""
    return f"{{{prefix}:r:{task_id}}}:notify"


def watch_key(prefix: str, task_id: str) -> str:
    """STRING ``1`` with a PX ttl while a coroutine streams the task's updates (``aupdates``; its record's slot)."""
    return f"{{{prefix}:r:{task_id}}}:watch"


def changed_key(prefix: str, task_id: str) -> str:
    """LIST holding one token after a write of the task's record while it is watched (same slot as its record)."""
    return f"{{{prefix}:r:{task_id}}}:changed"


def lease_key(prefix: str, name: str) -> str:
    """STRING owner with a PX ttl: the coordination lease ``name`` (result backend, e.g. the beat leader)."""
    return f"{{{prefix}:lease:{name}}}"


def claim_key(prefix: str, key: str) -> str:
    """STRING ``1`` with a PX ttl: the unique claim ``key`` (result backend, e.g. one beat slot)."""
    return f"{{{prefix}:claim:{key}}}"


def counts_key(prefix: str, key: str) -> str:
    """HASH name -> float: the counter set ``key`` (Store.add_counts), no expiry."""
    return f"{{{prefix}:counts:{key}}}"


def events_key(prefix: str) -> str:
    """STREAM of event batches (conveyor/eventlog.py), one field ``b``; capped at MAX_BATCHES and trimmed by age."""
    return f"{{{prefix}:events}}"


def value_key(prefix: str, key: str) -> str:
    """STRING value, with a PX ttl or none: a small value of the result backend (e.g. beat's last fired slot)."""
    return f"{{{prefix}:kv:{key}}}"


def gather_key(prefix: str, key: str) -> str:
    """HASH slot index -> value with a PX ttl: a gather of the result backend (a chord's member results)."""
    return f"{{{prefix}:g:{key}}}"


def bucket_key(prefix: str, name: str) -> str:
    """HASH ``tokens``, ``at`` with a PX ttl: a token bucket of the result backend (a global rate limit)."""
    return f"{{{prefix}:bucket:{name}}}"


def holder(queue: str, message_id: str) -> bytes:
    """Who holds an idempotency key: ``<len(queue)>:<queue><id>``, unambiguous whatever the names hold."""
    name = queue.encode()
    return b"%d:%s%s" % (len(name), name, message_id.encode())


def parse_claim(claim: bytes) -> tuple[str, str]:
    """The (queue, message id) of a claim ``<claimed_at_ms>|<len(queue)>:<queue><id>``."""
    _, _, who = claim.partition(b"|")
    length, _, rest = who.partition(b":")
    size = int(length)
    return rest[:size].decode(), rest[size:].decode()
