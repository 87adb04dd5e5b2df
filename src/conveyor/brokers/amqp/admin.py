"""The AMQP broker's operations that walk queues: dead letters, cancel, purge, counts, the registry.

Each is a :func:`~conveyor.brokers.amqp.scan.scan` in one transaction (AMQP cannot list queues or
delete one message), so each costs one round trip per message of the queues it walks: fine for
thousands of messages, slow for millions (docs/amqp.md, "What maps where"). Worker heartbeats live in
the store (``set_value`` with a time to live), their ids in the registry queue.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic, BasicProperties

from conveyor.brokers.amqp.connection import AMQPConnection
from conveyor.brokers.amqp.names import declarations, queue_names, registry_name, type_arguments
from conveyor.brokers.amqp.scan import (
    Decide,
    Meta,
    add_to_registry,
    dead_letter_of,
    keep_unmarked,
    meta_of,
    properties,
    read_registry,
    scan,
)
from conveyor.brokers.base import DeadLetter, WorkerInfo

if TYPE_CHECKING:
    from conveyor.backends.base import Store


#: Scans cancel makes for ids it has not found yet: a second one finds a scheduled message that was
#: between two queues (dead-lettered, or held by a promoter) as the first scan passed it (see ``_waiting``).
CANCEL_PASSES = 2


class Admin:
    """Scans and registry of one AMQP broker.

    Args:
        conn: the broker's connection.
        prefix: the broker's queue prefix.
        store: where worker heartbeats live (the app's result backend).
        declared: the conveyor queues the broker declared in this process (always listed).
    """

    def __init__(
        self, conn: AMQPConnection, prefix: str, store: Store, declared: set[str], queue_type: str = "classic"
    ) -> None:
        self._conn = conn
        self._queue_type = queue_type
        self._quorum = queue_type == "quorum"  # a ready queue per priority band (names.py)
        self.registry_args = type_arguments(queue_type)
        self._prefix = prefix
        self._store = store
        self._declared = declared
        self._added: set[tuple[str, str]] = set()  # registry entries this process wrote
        self.registry = registry_name(prefix)

    # -- dead letters, cancel, purge ---------------------------------------------------------

    def dead_letters(self, limit: int, queue: str | None) -> list[DeadLetter]:
        """Every dead letter of the known queues (or ``queue``), oldest first, up to ``limit``."""
        found: list[DeadLetter] = []
        for name in [q for q in self.queues() if queue is None or q == queue]:

            def keep(method: Basic.GetOk, props: BasicProperties, body: bytes, name: str = name) -> bool:
                found.append(dead_letter_of(name, props, body))
                return False

            self.scan_all([queue_names(self._prefix, name, self._quorum).dead], keep)
        found.sort(key=lambda letter: letter.dead_at)
        return found[:limit]

    def requeue_dead(self, ids: Sequence[str] | None) -> int:
        """Publish the chosen dead letters to their ready queue with deliveries reset."""
        wanted = None if ids is None else set(ids)

        def decider(ch: BlockingChannel, queue: str, name: str) -> Decide:
            def decide(method: Basic.GetOk, props: BasicProperties, body: bytes) -> bool:
                entry = meta_of(props)
                if wanted is not None and entry.id not in wanted:
                    return False
                fresh = Meta(entry.id, entry.priority, 0, explicit=entry.explicit)
                ch.basic_publish(
                    "",
                    queue_names(self._prefix, queue, self._quorum).ready_for(entry.priority),
                    body,
                    properties(fresh),
                )
                return True

            return decide

        return self.scan_each(self._dead, decider)

    def purge_dead(self, ids: Sequence[str] | None) -> list[Meta]:
        """Delete the chosen dead letters; return their entries (to release their explicit ids)."""
        wanted = None if ids is None else set(ids)
        removed: list[Meta] = []

        def decide(method: Basic.GetOk, props: BasicProperties, body: bytes) -> bool:
            entry = meta_of(props)
            if wanted is not None and entry.id not in wanted:
                return False
            removed.append(entry)
            return True

        self.scan_each(self._dead, lambda ch, q, name: decide)
        return removed

    def cancel(self, ids: Sequence[str]) -> tuple[list[str], list[Meta]]:
        """Delete waiting (ready or scheduled) messages by id; return the ids found and their entries."""
        wanted = set(ids)
        removed: list[Meta] = []

        def decider(ch: BlockingChannel, queue: str, name: str) -> Decide:
            ready = queue_names(self._prefix, queue, self._quorum).bands

            def decide(method: Basic.GetOk, props: BasicProperties, body: bytes) -> bool:
                entry = meta_of(props)
                if entry.id in wanted:
                    removed.append(entry)
                elif name in ready:
                    keep_unmarked(ch, name, props, body)
                else:
                    return False  # scheduled: a requeue keeps its TTL, and no one reads its redelivered flag
                return True

            return decide

        for _ in range(CANCEL_PASSES):
            if not wanted:
                break
            self.scan_each(self._waiting, decider)
            wanted -= {e.id for e in removed}
        gone = {e.id for e in removed}
        return [i for i in ids if i in gone], removed

    def purge(self, queue: str) -> list[Meta]:
        """Delete every waiting message of ``queue``; return their entries (to release their keys)."""
        removed: list[Meta] = []

        def decide(method: Basic.GetOk, props: BasicProperties, body: bytes) -> bool:
            removed.append(meta_of(props))
            return True

        self.scan_all(self._waiting(queue), decide)
        return removed

    def counts(self, ch: BlockingChannel, queue: str) -> tuple[int, int, int]:
        """(ready, scheduled, dead) of a declared queue, from ``queue.declare`` answers."""
        names = queue_names(self._prefix, queue, self._quorum)
        count = {
            name: int(ch.queue_declare(name, durable=True, arguments=args).method.message_count)
            for name, args in declarations(names, self._queue_type)
        }
        ready = sum(count[name] for name in names.bands)
        return ready, sum(count[name] for name in names.scheduled), count[names.dead]

    def scan_each(
        self, rabbit_queues: Callable[[str], list[str]], decider: Callable[[BlockingChannel, str, str], Decide]
    ) -> int:
        """Scan the given RabbitMQ queues of every known conveyor queue, one transaction per conveyor queue.

        ``decider(channel, conveyor queue, RabbitMQ queue)`` gives the callback for each RabbitMQ queue.
        """
        total = 0
        for queue in self.queues():

            def op(ch: BlockingChannel, queue: str = queue) -> int:
                taken = sum(scan(ch, name, decider(ch, queue, name)) for name in rabbit_queues(queue))
                ch.tx_commit()
                return taken

            total += self._conn.call(op)
        return total

    def scan_all(self, names: Sequence[str], decide: Decide) -> int:
        """Scan ``names`` in one transaction."""

        def op(ch: BlockingChannel) -> int:
            taken = sum(scan(ch, name, decide) for name in names)
            ch.tx_commit()
            return taken

        return self._conn.call(op)

    def _waiting(self, queue: str) -> list[str]:
        """The RabbitMQ queues of waiting messages, in the order messages move through them.

        A scheduled message moves on its own while a scan runs: from its delay level (RabbitMQ, at its
        TTL) to the eta queue, and from there (a promoter) to a lower level or, once due, to a ready
        queue. Scanned downstream first, the ready queues first, a message moved into them after their
        turn was missed (revoke() answered False for a task waiting for its retry). Scanned the way
        they move, the highest level first and the ready queues last, a message can only move ahead of
        the scan; it is missed only if it is in between (dead-lettered, or held by a promoter) as the scan
        passes it and lands behind it, which :data:`CANCEL_PASSES` makes rarer still.
        """
        names = queue_names(self._prefix, queue, self._quorum)
        return [*reversed(names.levels), names.eta, *names.bands]

    def _dead(self, queue: str) -> list[str]:
        return [queue_names(self._prefix, queue, self._quorum).dead]

    # -- registry and workers ----------------------------------------------------------------

    def queues(self) -> list[str]:
        """Every known conveyor queue: the registry's and this process's."""
        return self._conn.call(self.queues_locked)

    def queues_locked(self, ch: BlockingChannel) -> list[str]:
        """:meth:`queues` on a channel the caller holds."""
        return self.entries_locked(ch)[0]

    def entries_locked(self, ch: BlockingChannel) -> tuple[list[str], list[str]]:
        """Known queues and lease owners, from one registry read."""
        entries = self._scan_registry(ch)
        queues = {name for kind, name in entries if kind == "queue"} | self._declared
        return sorted(queues), sorted(name for kind, name in entries if kind == "owner")

    def register(self, ch: BlockingChannel, kind: str, name: str) -> bool:
        """Add a registry entry once per process (in the caller's transaction); True when it did now."""
        if (kind, name) in self._added:
            return False
        ch.queue_declare(self.registry, durable=True, arguments=self.registry_args)
        add_to_registry(ch, self.registry, kind, name)
        self._added.add((kind, name))
        return True

    def forget(self, entries: Sequence[tuple[str, str]]) -> None:
        """Delete registry entries (stale workers or owners)."""
        if entries:
            self._conn.call(lambda ch: self._scan_registry(ch, forget=entries))

    def register_worker(self, info: WorkerInfo, ttl: float) -> None:
        """Put the worker's id in the registry (once per process) and its heartbeat in the store."""
        if ("worker", info.id) not in self._added:
            self._conn.call(lambda ch: self._register_worker_id(ch, info.id))
        self._store.set_value(self._worker_key(info.id), json.dumps(info.to_dict()).encode(), ttl)

    def unregister_worker(self, worker_id: str) -> None:
        """Forget a worker's heartbeat and registry entry."""
        self._store.delete_value(self._worker_key(worker_id))
        self.forget([("worker", worker_id)])

    def workers(self) -> list[WorkerInfo]:
        """Registered workers whose heartbeat is alive; the registry forgets the others."""
        entries = self._conn.call(lambda ch: self._scan_registry(ch))
        live, gone = [], []
        for kind, name in entries:
            if kind != "worker":
                continue
            raw = self._store.get_value(self._worker_key(name))
            if raw is None:
                gone.append(("worker", name))
            else:
                live.append(WorkerInfo.from_dict(json.loads(raw)))
        self.forget(gone)
        return sorted(live, key=lambda w: w.id)

    def _scan_registry(self, ch: BlockingChannel, forget: Sequence[tuple[str, str]] = ()) -> list[tuple[str, str]]:
        ch.queue_declare(self.registry, durable=True, arguments=self.registry_args)
        entries = read_registry(ch, self.registry, forget)
        ch.tx_commit()
        return entries

    def _register_worker_id(self, ch: BlockingChannel, worker_id: str) -> None:
        self.register(ch, "worker", worker_id)
        ch.tx_commit()

    def _worker_key(self, worker_id: str) -> str:
        return f"{self._prefix}:worker:{worker_id}"
