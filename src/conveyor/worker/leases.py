"""LeaseKeeper: the heartbeat that keeps running tasks leased to this worker process.

Every ``lease / 3`` seconds it extends the lease of every delivery the process is running, so a
task on a live worker is never handed to another one however long it runs; when the process
dies the heartbeat dies with it and the leases expire. A lease found lost (the broker already
redelivered the message, e.g. after a long network cut) is logged: that task may run twice.

Each beat also tells the broker which of the held deliveries are running now (read from the child's
shared board, no per-task cost): an expired lease counts a delivery only against a message a beat saw
running, so when a whole worker is killed its prefetched, never-started deliveries go back uncounted
(``Broker.extend``'s ``running``). A task that kills its worker before its first beat is not marked;
the broker's bound on uncounted returns (``REQUEUES_PER_DELIVERY``) still buries it.

A task that holds the GIL (a long C call) starves this thread; each beat therefore stamps the
child's shared board, and the supervisor extends the child's leases itself while the stamp is
stale (``Broker.extend_owner``; see worker/shared.py).

Fencing (:meth:`LeaseKeeper.fence`): before a finished task's result is written, the pool asks which
of the finished deliveries lost their lease meanwhile (a network cut longer than the lease: the
message ran again elsewhere). Their results and acks are dropped, so a late write never replaces the
record of the run that holds the lease. Only a delivery whose lease is in doubt costs a round trip:
one reserved or extended less than ``lease / 2`` ago is surely held (the broker's deadline is at
least ``lease`` after the request left), which is every delivery while heartbeats succeed.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable

from conveyor.brokers import Broker, Delivery
from conveyor.errors import BrokerError

log = logging.getLogger("conveyor.worker")


def owner_of(worker_id: str, pid: int) -> str:
    """The lease owner name of a child process; the supervisor releases it when the child dies.

    ``worker_id`` is ``hostname.pid.nonce``: the random nonce keeps owners apart for workers in
    separate PID namespaces with one hostname (containers), whose pids repeat.
    """
    return f"{worker_id}/{pid}"


class LeaseKeeper:
    """Extends the leases of the deliveries it holds, on a daemon thread.

    Args:
        broker: the broker the deliveries came from.
        lease: the lease length in seconds; the heartbeat runs every third of it.
        on_beat: called after each beat that kept every lease it could reach (the child stamps
            the time in shared memory: its supervisor takes over the leases when it goes stale).
        running: answers the ids of the deliveries running now (the child's board), read once per
            beat; the broker marks those started. None: nothing is marked.
    """

    def __init__(
        self,
        broker: Broker,
        lease: float,
        on_beat: Callable[[], None] | None = None,
        running: Callable[[], Collection[str]] | None = None,
    ) -> None:
        self.broker = broker
        self._on_beat = on_beat
        self._running = running
        self.lease = lease
        self.interval = lease / 3
        self._held: dict[str, Delivery] = {}
        self._acking: set[str] = set()  # being acked: still extended, but no longer reported lost
        self._suspect: set[str] = set()  # found lost by the last beat, still held: reported if found again
        # monotonic time before the last request that reserved or extended each held delivery's lease
        self._sure: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="conveyor-heartbeat", daemon=True)

    def start(self) -> None:
        """Start heartbeating."""
        self._thread.start()

    def stop(self) -> None:
        """Stop heartbeating (leases then expire unless acked)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.interval + 1)

    def hold(self, delivery: Delivery, since: float | None = None) -> None:
        """Start keeping ``delivery`` leased; ``since``: ``time.monotonic()`` before the reserve that took it."""
        self.hold_all([delivery], since)

    def hold_all(self, deliveries: Iterable[Delivery], since: float | None = None) -> None:
        """Start keeping every one of ``deliveries`` leased (a reserved batch: one lock, not one per task).

        ``since`` is ``time.monotonic()`` taken before the reserve call that returned them (its lease runs
        from the broker's receipt of it); None: now.
        """
        at = time.monotonic() if since is None else since
        with self._lock:
            acking = self._acking
            for delivery in deliveries:
                self._held[delivery.id] = delivery
                self._sure[delivery.id] = at
                if acking:
                    acking.discard(delivery.id)  # a new lease (the old one may have been given back)

    def release(self, delivery: Delivery) -> None:
        """Stop keeping ``delivery`` leased (it was acked, nacked or dead-lettered).

        Only that lease: a newer lease of the same message (given back, then reserved again by this
        process before this call) stays held.
        """
        with self._lock:
            self._drop(delivery)

    def release_all(self, deliveries: Iterable[Delivery]) -> None:
        """Stop keeping every one of ``deliveries`` leased (an acked batch); newer leases of them stay held."""
        with self._lock:
            for delivery in deliveries:
                self._drop(delivery)

    def _drop(self, delivery: Delivery) -> None:
        # Under the lock. A message given back (nack) can be reserved again by this process while the
        # give-back is still on its way: the pool's loop reserves while the backlog watch returns the
        # batch-mates of a long task one by one. The new lease (new token) must not be dropped by the
        # give-back's release, or nothing extends it and the task runs twice while this worker lives.
        held = self._held.get(delivery.id)
        if held is not None and held.token == delivery.token:
            del self._held[delivery.id]
            self._sure.pop(delivery.id, None)
            self._acking.discard(delivery.id)

    def give_back(self, deliveries: list[Delivery]) -> None:
        """Nack ``deliveries`` (reserved, not started) back to their queue and stop keeping them leased.

        One call (``Broker.give_back``); meanwhile a heartbeat counts the ones given back as being
        settled, not as lost leases. A give-back the broker refuses leaves those leases to expire.
        """
        self.acking(deliveries)
        if deliveries:
            with contextlib.suppress(BrokerError):
                self.broker.give_back(deliveries)
        self.release_all(deliveries)

    def acking(self, deliveries: list[Delivery]) -> None:
        """``deliveries`` are being acked (or given back): keep them leased (the ack may fail) but do not
        report them lost.

        An ack and reserve in one call waits for new work after the ack; a beat in between would
        otherwise find the acked deliveries gone and warn that they may run twice.
        """
        with self._lock:
            self._acking.update(d.id for d in deliveries)

    def held(self) -> list[Delivery]:
        """The deliveries currently kept leased."""
        with self._lock:
            return list(self._held.values())

    def _beat(self) -> None:
        if self._on_beat is not None:
            self._on_beat()
        while not self._stop.wait(self.interval):
            self.beat()

    def beat(self) -> None:
        """Extend every held lease now."""
        held = self.held()
        if held:
            sent = time.monotonic()
            try:
                lost = self.broker.extend(held, self.lease, self._running() if self._running else ())
            except BrokerError as exc:
                log.warning("heartbeat failed, will retry in %.1fs: %s", self.interval, exc)
                return
            self._extended(held, lost, sent)
            self._report_lost(lost)
        if self._on_beat is not None:
            self._on_beat()

    def fence(self, deliveries: list[Delivery]) -> set[str]:
        """The ids among finished ``deliveries`` whose lease is lost: their results and acks must be dropped.

        A delivery reserved or extended less than ``lease / 2`` ago is held for sure and costs nothing.
        If one is in doubt (heartbeats failed meanwhile: a network cut, a broker outage), this beats
        now, for every held delivery as a heartbeat would, and answers those of ``deliveries`` the broker
        no longer leases to this owner (their message was redelivered).

        Raises:
            BrokerError: the broker did not answer (settle later: the leases stay in doubt until it does).
        """
        now = time.monotonic()
        with self._lock:
            doubt = any(now - self._sure.get(d.id, -1e18) >= self.lease / 2 for d in deliveries)
        if not doubt:
            return set()
        held = self.held()
        lost = self.broker.extend(held, self.lease, self._running() if self._running else ())
        self._extended(held, lost, now)
        return set(lost) & {d.id for d in deliveries}

    def _extended(self, deliveries: list[Delivery], lost: list[str], sent: float) -> None:
        """The leases of ``deliveries`` but ``lost`` now run ``lease`` seconds past a request sent at ``sent``."""
        gone = set(lost)
        with self._lock:
            for delivery in deliveries:
                if delivery.id in self._sure:
                    self._sure[delivery.id] = -1e18 if delivery.id in gone else sent

    def _report_lost(self, lost: list[str]) -> None:
        # A delivery acked while the extend was on its way is not lost: it is released right after its
        # ack, so one found lost is reported only if the next beat still holds it and finds it lost.
        with self._lock:
            held = [msg_id for msg_id in lost if msg_id in self._held and msg_id not in self._acking]
            confirmed = [msg_id for msg_id in held if msg_id in self._suspect]
            self._suspect = set(held) - set(confirmed)
        for msg_id in confirmed:
            log.warning("lease of message %s was lost (redelivered elsewhere); it may run twice", msg_id)
