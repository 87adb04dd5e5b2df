"""The RabbitMQ layout of the AMQP broker: queue names, their arguments, headers, and delay levels.

Everything here is pure. Per conveyor queue ``NAME`` under the URL's ``prefix`` (default
``conveyor``) the broker declares, through the default exchange (routing key = queue name)::

    PREFIX.q.NAME              ready messages; classic, durable, x-max-priority 9
    PREFIX.q.NAME.eta          scheduled messages whose current delay level ran out: a worker decides
                               (due: publish to ready; not yet: publish to the next delay level)
    PREFIX.q.NAME.delay.K      delay level K (K = 0..MAX_LEVEL): x-message-ttl 4**K ms, dead-lettered
                               into PREFIX.q.NAME.eta when it expires
    PREFIX.q.NAME.dead         dead letters, with the reason in their headers
    PREFIX.registry            one message per known queue name and worker id (see scan.py)

With ``queue_type=quorum`` in the URL every one of them (the registry too) is a quorum queue
(``x-queue-type: quorum``) and the ready queue has no ``x-max-priority``: RabbitMQ 3.10's quorum
queues have no priorities, so priorities 7-9 and 4-6 have ready queues of their own,
``PREFIX.q.NAME.p7`` and ``PREFIX.q.NAME.p4`` (``QueueNames.bands``), read before ``PREFIX.q.NAME``
(docs/amqp.md, "Quorum queues").

Every message of a level queue has the same TTL, so they expire in arrival order: RabbitMQ's
per-message-TTL head-of-line problem cannot hold a short delay behind a long one.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

#: Queue and key prefix used when the URL carries no ``prefix=`` query parameter.
DEFAULT_PREFIX = "conveyor"
#: Highest priority conveyor uses (0-9): the ready queue's ``x-max-priority``.
MAX_PRIORITY = 9
#: The ``queue_type`` URL values: classic (the default) or quorum.
QUEUE_TYPES = ("classic", "quorum")
#: Delay levels are ``LEVEL_BASE ** K`` milliseconds, K = 0..MAX_LEVEL (4**17 ms is about 199 days).
LEVEL_BASE = 4
MAX_LEVEL = 17

#: Header: deliveries this message had before this copy was published (a copy counts on).
H_DELIVERIES = "x-conveyor-deliveries"
#: Header: the ``started`` time of the STARTED result record whose crash this copy already counted.
H_STARTED = "x-conveyor-started"
#: Header: times RabbitMQ requeued this message after a crash without its task having started.
H_REQUEUES = "x-conveyor-requeues"
#: Header: 1 when the message's id was the sender's (``task_id=``) and holds an id claim.
H_EXPLICIT = "x-conveyor-explicit-id"
#: Header: Unix time (a decimal string) before which the message must not run.
H_ETA = "x-conveyor-eta"
#: Header: the idempotency key, released when the message is acked, dead-lettered or removed.
H_KEY = "x-conveyor-key"
#: Headers of a dead letter: why, when (Unix time as a decimal string), after how many deliveries.
H_REASON = "x-conveyor-reason"
H_DEAD_AT = "x-conveyor-dead-at"
#: Header of a registry entry: ``queue`` or ``worker``.
H_KIND = "x-conveyor-kind"


#: Quorum queues (RabbitMQ 3.10: no priorities): the lowest priority of each band, highest band first.
#: Priorities 7-9 go to ``PREFIX.q.NAME.p7``, 4-6 to ``PREFIX.q.NAME.p4``, 0-3 to ``PREFIX.q.NAME``.
BANDS = (7, 4, 0)


@dataclasses.dataclass(frozen=True, slots=True)
class QueueNames:
    """The RabbitMQ queues of one conveyor queue (see the module docstring)."""

    ready: str
    eta: str
    dead: str
    levels: tuple[str, ...]
    #: The ready queues, highest priority first: ``(ready,)`` on classic queues (``x-max-priority``
    #: orders them), one per band of :data:`BANDS` on quorum queues (the lowest band is ``ready``).
    bands: tuple[str, ...] = ()

    def ready_for(self, priority: int) -> str:
        """The ready queue of a message of ``priority``."""
        if len(self.bands) <= 1:
            return self.ready
        for band, name in zip(BANDS, self.bands, strict=True):
            if priority >= band:
                return name
        return self.ready

    @property
    def scheduled(self) -> tuple[str, ...]:
        """The queues that hold scheduled messages: the eta queue and every delay level."""
        return (self.eta, *self.levels)


@functools.lru_cache(maxsize=1024)
def queue_names(prefix: str, queue: str, quorum: bool = False) -> QueueNames:
    """The RabbitMQ queue names of ``queue`` under ``prefix`` (cached: asked on every call)."""
    ready = f"{prefix}.q.{queue}"
    return QueueNames(
        ready=ready,
        eta=f"{ready}.eta",
        dead=f"{ready}.dead",
        levels=tuple(f"{ready}.delay.{k}" for k in range(MAX_LEVEL + 1)),
        bands=tuple(f"{ready}.p{band}" if band else ready for band in BANDS) if quorum else (ready,),
    )


def registry_name(prefix: str) -> str:
    """The registry queue: known queue names and worker ids."""
    return f"{prefix}.registry"


def type_arguments(queue_type: str) -> dict[str, Any]:
    """The arguments every queue of ``queue_type`` carries: none for classic, ``x-queue-type`` for quorum."""
    return {"x-queue-type": "quorum"} if queue_type == "quorum" else {}


def declarations(names: QueueNames, queue_type: str = "classic") -> list[tuple[str, dict[str, Any]]]:
    """(queue, arguments) of every queue of one conveyor queue, the ready queue last.

    The ready queue is declared last, so a queue that exists proves its whole topology does. Quorum
    queues take the same TTL and dead-letter arguments (RabbitMQ 3.10 has both for them) and no
    ``x-max-priority``; no ``x-delivery-limit`` either (conveyor counts deliveries itself).
    """
    kind = type_arguments(queue_type)
    # A quorum level dead-letters at least once (RabbitMQ 3.10+; it requires reject-publish, which
    # never applies without a length limit): a node lost between a TTL and its dead-lettering loses nothing.
    safe = {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"} if kind else {}
    out: list[tuple[str, dict[str, Any]]] = [(names.eta, dict(kind)), (names.dead, dict(kind))]
    for k, level in enumerate(names.levels):
        out.append(
            (
                level,
                {
                    **kind,
                    **safe,
                    "x-message-ttl": level_ms(k),
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": names.eta,
                },
            )
        )
    out.extend((band, dict(kind)) for band in names.bands if band != names.ready)
    out.append((names.ready, dict(kind) if kind else {"x-max-priority": MAX_PRIORITY}))
    return out


def level_ms(k: int) -> int:
    """The TTL of delay level ``k`` in milliseconds."""
    return int(LEVEL_BASE**k)


def level_for(remaining: float) -> int:
    """The delay level for ``remaining`` seconds: the longest level not longer than it (at least 0).

    A message waits one level, comes back to the eta queue, and is sent to the next level for what
    remains, so it never comes back after its eta by more than one 1 ms level, and never before it:
    each level is at most the remaining delay. Every level at most triples the hops (base 4).
    """
    ms = remaining * 1000.0
    if ms < LEVEL_BASE:
        return 0
    return min(MAX_LEVEL, math.floor(math.log(ms, LEVEL_BASE) + 1e-9))
