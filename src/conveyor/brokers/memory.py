"""MemoryBroker: the in-process twin of every broker, for tests (conveyor's and users').

It keeps the full contract of :class:`~conveyor.brokers.base.Broker` (leases, schedule,
priorities, dead letters) in dictionaries guarded by one condition variable. It lives in one
process: a worker in another process cannot see it.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import threading
import time
import uuid
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

from conveyor.brokers.base import REQUEUES_PER_DELIVERY, Broker, DeadLetter, Delivery, Envelope, QueueStats, WorkerInfo
from conveyor.errors import DuplicateTaskId

if TYPE_CHECKING:
    from conveyor.backends.base import ResultBackend


@dataclasses.dataclass(slots=True)
class _Record:
    id: str
    queue: str
    body: bytes
    priority: int
    seq: int
    key: str | None
    deliveries: int = 0
    started: bool = False  # marked by a heartbeat's ``running`` in this delivery (see Broker.extend)
    requeues: int = 0  # expired leases returned uncounted (never marked started)
    eta: float | None = None
    owner: str = ""
    token: str = ""
    lease_until: float = 0.0
    state: str = "ready"  # ready | scheduled | in_flight | dead
    reason: str = ""
    dead_at: float = 0.0


class MemoryBroker(Broker):
    """A broker in this process's memory; ``memory://`` URLs (nothing in them is read; ``store`` is not used)."""

    def __init__(self, url: str = "memory://", *, max_deliveries: int = 5, store: ResultBackend | None = None) -> None:
        super().__init__(url, max_deliveries=max_deliveries)
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._records: dict[str, _Record] = {}
        self._ready: dict[str, list[tuple[int, int, str]]] = {}  # queue -> heap of (-priority, seq, id)
        self._scheduled: list[tuple[float, int, str]] = []  # heap of (eta, seq, id)
        self._keys: dict[str, str] = {}
        self._workers: dict[str, tuple[WorkerInfo, float]] = {}

    def enqueue(self, envelopes: Sequence[Envelope]) -> list[str]:
        ids: list[str] = []
        now = time.time()
        with self._cond:
            self._refuse_held(envelopes)
            for env in envelopes:
                if env.key is not None and env.key in self._keys:
                    ids.append(self._keys[env.key])
                    continue
                record = _Record(env.id, env.queue, env.body, env.priority, next(self._seq), env.key)
                self._records[env.id] = record
                self._ready.setdefault(env.queue, [])
                if env.key is not None:
                    self._keys[env.key] = env.id
                self._place(record, env.eta if env.eta is not None and env.eta > now else None)
                ids.append(env.id)
            self._cond.notify_all()
        return ids

    def _refuse_held(self, envelopes: Sequence[Envelope]) -> None:
        """Raise DuplicateTaskId before anything is stored if a stored envelope's id is held or repeated.

        An envelope whose key folds onto a pending message is not stored, so its id is not checked
        (a keyed enqueue sent again with its own id answers that id, as a beat re-firing a slot does).
        """
        keys: set[str] = set()
        ids: set[str] = set()
        for env in envelopes:
            if env.key is not None:
                if env.key in self._keys or env.key in keys:
                    continue
                keys.add(env.key)
            if env.id in self._records or env.id in ids:
                raise DuplicateTaskId(env.id)
            ids.add(env.id)

    async def aenqueue(self, envelopes: Sequence[Envelope]) -> list[str]:
        return self.enqueue(envelopes)  # in memory: nothing to wait for

    def reserve(
        self, queues: Sequence[str], n: int, *, owner: str, lease: float, timeout: float = 0.0
    ) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                self._recover_locked(time.time())
                out = self._take_locked(queues, n, owner, lease)
                remaining = deadline - time.monotonic()
                if out or remaining <= 0 or self.waits_stopped:
                    return out
                self._cond.wait(min(remaining, self._next_wakeup()))

    def stop_waiting(self) -> None:
        super().stop_waiting()
        with self._cond:  # an RLock: safe in a signal handler that interrupted this thread's own wait
            self._cond.notify_all()

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        with self._cond:
            for delivery in deliveries:
                record = self._held(delivery)
                if record is not None:
                    self._drop(record)

    def nack(self, delivery: Delivery, *, delay: float = 0.0, body: bytes | None = None) -> None:
        with self._cond:
            record = self._held(delivery)
            if record is None:
                return
            record.deliveries -= 1
            if body is not None:
                record.body = body
            self._place(record, time.time() + delay if delay > 0 else None)
            self._cond.notify_all()

    def extend(self, deliveries: Sequence[Delivery], lease: float, running: Collection[str] = ()) -> list[str]:
        lost: list[str] = []
        until = time.time() + lease
        with self._cond:
            for delivery in deliveries:
                record = self._held(delivery)
                if record is None:
                    lost.append(delivery.id)
                else:
                    record.lease_until = until
                    record.started = record.started or delivery.id in running
        return lost

    def dead_letter(self, delivery: Delivery, reason: str, body: bytes | None = None) -> None:
        with self._cond:
            record = self._held(delivery)
            if record is not None:
                if body is not None:
                    record.body = body
                self._bury(record, reason)

    def release_owner(self, owner: str, running: Collection[str] | None = None) -> int:
        with self._cond:
            held = [r for r in self._records.values() if r.state == "in_flight" and r.owner == owner]
            for record in held:
                if running is None or record.id in running:
                    self._redeliver(record, f"its worker process {owner} died")
                else:  # never started (or finished, ack pending): back without counting a delivery
                    record.deliveries -= 1
                    self._place(record, None)
            self._cond.notify_all()
            return len(held)

    def extend_owner(self, owner: str, lease: float) -> int:
        until = time.time() + lease
        with self._cond:
            held = [r for r in self._records.values() if r.state == "in_flight" and r.owner == owner]
            for record in held:
                record.lease_until = until
            return len(held)

    def recover(self) -> int:
        with self._cond:
            moved = self._recover_locked(time.time())
            self._cond.notify_all()
            return moved

    def stats(self) -> list[QueueStats]:
        counts: dict[str, dict[str, int]] = {}
        with self._cond:
            for queue in self._ready:
                counts.setdefault(queue, {})
            for record in self._records.values():
                per_queue = counts.setdefault(record.queue, {})
                per_queue[record.state] = per_queue.get(record.state, 0) + 1
        return [
            QueueStats(q, c.get("ready", 0), c.get("scheduled", 0), c.get("in_flight", 0), c.get("dead", 0))
            for q, c in sorted(counts.items())
        ]

    def dead_letters(self, limit: int = 100, queue: str | None = None) -> list[DeadLetter]:
        with self._cond:
            dead = [r for r in self._records.values() if r.state == "dead" and (queue is None or r.queue == queue)]
        dead.sort(key=lambda r: (r.dead_at, r.seq))
        return [DeadLetter(r.id, r.queue, r.body, r.reason, r.dead_at, r.deliveries) for r in dead[:limit]]

    def requeue_dead(self, ids: Sequence[str] | None = None) -> int:
        with self._cond:
            chosen = self._dead_records(ids)
            for record in chosen:
                record.deliveries = record.requeues = 0
                record.reason = ""
                self._place(record, None)
            self._cond.notify_all()
            return len(chosen)

    def purge_dead(self, ids: Sequence[str] | None = None) -> int:
        with self._cond:
            chosen = self._dead_records(ids)
            for record in chosen:
                del self._records[record.id]
            return len(chosen)

    def cancel(self, ids: Sequence[str]) -> list[str]:
        with self._cond:
            doomed = [self._records[i] for i in ids if i in self._records]
            doomed = [r for r in doomed if r.state in ("ready", "scheduled")]
            for record in doomed:
                self._drop(record)
            return [r.id for r in doomed]

    def purge(self, queue: str) -> int:
        with self._cond:
            doomed = [r for r in self._records.values() if r.queue == queue and r.state in ("ready", "scheduled")]
            for record in doomed:
                self._drop(record)
            return len(doomed)

    def register_worker(self, info: WorkerInfo, ttl: float) -> None:
        with self._cond:
            self._workers[info.id] = (info, time.time() + ttl)

    def unregister_worker(self, worker_id: str) -> None:
        with self._cond:
            self._workers.pop(worker_id, None)

    def workers(self) -> list[WorkerInfo]:
        now = time.time()
        with self._cond:
            return sorted((info for info, until in self._workers.values() if until > now), key=lambda w: w.id)

    def release_scheduled(self) -> int:
        """Make every scheduled message ready now, as if its countdown, ETA or retry delay had passed.

        For tests only (``conveyor.testing.eager``, ``drain(skip_delays=True)``): a test runs a retry
        or a countdown task without waiting for it. Returns how many messages became ready.
        """
        with self._cond:
            moved = self._promote_locked(float("inf"))
            self._cond.notify_all()
        return moved

    # -- helpers; the caller holds the lock ------------------------------------------------

    def _place(self, record: _Record, eta: float | None) -> None:
        record.owner = record.token = ""
        record.eta = eta
        if eta is None:
            record.state = "ready"
            heapq.heappush(self._ready.setdefault(record.queue, []), (-record.priority, record.seq, record.id))
        else:
            record.state = "scheduled"
            heapq.heappush(self._scheduled, (eta, record.seq, record.id))

    def _take_locked(self, queues: Sequence[str], n: int, owner: str, lease: float) -> list[Delivery]:
        out: list[Delivery] = []
        until = time.time() + lease
        for queue in queues:
            heap = self._ready.get(queue, [])
            while heap and len(out) < n:
                _, seq, msg_id = heapq.heappop(heap)
                record = self._records.get(msg_id)
                if record is None or record.state != "ready" or record.seq != seq:
                    continue  # stale heap entry: the record moved on
                record.state, record.owner, record.token = "in_flight", owner, uuid.uuid4().hex
                record.lease_until = until
                record.deliveries += 1
                record.started = False
                out.append(
                    Delivery(record.id, queue, record.body, record.priority, record.deliveries, record.token, owner)
                )
        return out

    def _promote_locked(self, until: float) -> int:
        """Make the scheduled messages due by ``until`` ready; returns how many."""
        moved = 0
        while self._scheduled and self._scheduled[0][0] <= until:
            eta, _seq, msg_id = heapq.heappop(self._scheduled)
            record = self._records.get(msg_id)
            if record is not None and record.state == "scheduled" and record.eta == eta:
                self._place(record, None)
                moved += 1
        return moved

    def _recover_locked(self, now: float) -> int:
        moved = self._promote_locked(now)
        for record in [r for r in self._records.values() if r.state == "in_flight" and r.lease_until <= now]:
            self._expire(record)
            moved += 1
        return moved

    def _expire(self, record: _Record) -> None:
        """A lease ran out: count the delivery only if a heartbeat saw the message running."""
        if record.started:
            self._redeliver(record, "its lease expired without a heartbeat")
            return
        record.deliveries -= 1
        record.requeues += 1
        if record.requeues >= REQUEUES_PER_DELIVERY * self.max_deliveries:
            self._bury(record, f"its lease expired {record.requeues} times before it was seen running; poison?")
        else:
            self._place(record, None)

    def _redeliver(self, record: _Record, why: str) -> None:
        if record.deliveries >= self.max_deliveries:
            self._bury(record, f"delivered {record.deliveries} times without an acknowledgement ({why}); poison?")
        else:
            self._place(record, None)

    def _bury(self, record: _Record, reason: str) -> None:
        record.state, record.reason, record.dead_at = "dead", reason, time.time()
        record.owner = record.token = ""
        self._release_key(record)

    def _drop(self, record: _Record) -> None:
        self._records.pop(record.id, None)
        self._release_key(record)

    def _release_key(self, record: _Record) -> None:
        if record.key is not None and self._keys.get(record.key) == record.id:
            del self._keys[record.key]

    def _held(self, delivery: Delivery) -> _Record | None:
        record = self._records.get(delivery.id)
        if record is None or record.state != "in_flight" or record.token != delivery.token:
            return None
        return record

    def _dead_records(self, ids: Sequence[str] | None) -> list[_Record]:
        wanted = None if ids is None else set(ids)
        return [r for r in self._records.values() if r.state == "dead" and (wanted is None or r.id in wanted)]

    def _next_wakeup(self) -> float:
        """Seconds until the next scheduled message or lease expiry could make work ready."""
        now = time.time()
        soonest = self._scheduled[0][0] - now if self._scheduled else 1.0
        return max(0.001, min(soonest, 1.0))
