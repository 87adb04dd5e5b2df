"""Beat: the loop that fires an app's periodic entries, safe to run in any number of processes.

Every beat tries, each tick, to take or renew the leader lease ``beat:<app>`` in the result backend;
only the holder fires. For each entry the leader reads the last slot recorded in the backend, asks
:func:`~conveyor.scheduler.entries.plan` which slots are due (when several are, after a restart, a
take-over or a stall: only the latest, unless the entry has ``catch_up=True``), and fires each one
this way:

1. If this beat stalled past the lease it took at the start of the tick (a long pause, a slow
   backend), it stops the tick here, claiming and recording nothing more: the slots wait for its
   next tick, or for the current leader. A stall delays the run that is due; it never drops it.
2. ``claim("beat:<app>:<entry>:<slot ms>")``: the slot itself is the deduplication key. Of any
   number of beats that think they lead, exactly one creates it; the others record the slot as
   fired and move on. The claim makes its creator responsible for the slot.
3. So the creator enqueues, whatever happened since the claim (even a pause past its lease: the
   beat that took over found the claim and left the slot to it). The task id is derived from app,
   entry and slot and ``key=`` is the slot key, so a duplicate that got past the claim is folded
   into the same pending message; :class:`~conveyor.errors.DuplicateTaskId` means "already queued".
   If the enqueue fails (broker down), the claim is given back while this beat still holds its
   lease, and a later tick fires it (late, coalesced into a later slot's run, or as its ``missed``
   policy says); after the lease, another beat may have recorded the slot already, so this beat
   keeps the claim and enqueues the slot itself once the broker answers.
4. Record the slot as the entry's last fired slot, unless this beat stalled past its lease (step 1
   again): a slot whose claim was taken is recorded too, its claimer enqueues it.

``docs/beat.md`` walks through the failure cases (a leader killed or paused, a broker or backend
outage, two leaders, clock skew) and the one narrow window that remains.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import math
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

from conveyor.errors import BrokerError, ConfigurationError, ConveyorError, DuplicateTaskId
from conveyor.scheduler.entries import Entry, plan

if TYPE_CHECKING:
    from conveyor.app import App

log = logging.getLogger("conveyor.beat")

UTC = datetime.UTC
#: Namespace of the task ids derived from (app, entry, slot).
_ID_NAMESPACE = uuid.UUID("6f1b6c2e-4f7e-4d0a-9a51-2b7c0d1e8f33")
#: Shortest sleep between two ticks in seconds (a slot due "now" is fired on the next tick).
MIN_SLEEP = 0.01


class _LeaseLapsed(Exception):
    """This beat stalled past the lease it took this tick: it claims and records nothing more until it renews it."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Owed:
    """A slot this beat claimed but could not enqueue and could not give back: it alone enqueues it later."""

    entry: Entry
    slot: datetime.datetime
    until: float  # time.monotonic() past which the claim may lapse (less a lease of margin): another beat may fire it


def slot_ms(slot: datetime.datetime) -> int:
    """A slot as whole milliseconds since the epoch: the form used in keys, ids and the recorded state."""
    return round(slot.timestamp() * 1000)


def slot_key(app_name: str, entry: str, slot: datetime.datetime) -> str:
    """The claim (and ``key=``) that makes one slot of one entry fire once."""
    return f"beat:{app_name}:{entry}:{slot_ms(slot)}"


def slot_task_id(app_name: str, entry: str, slot: datetime.datetime) -> str:
    """The task id of one slot's run: the same in every beat process, 32 hex characters like any id."""
    return uuid.uuid5(_ID_NAMESPACE, slot_key(app_name, entry, slot)).hex


class Beat:
    """Fires ``app.schedule`` while it holds the leader lease; stands by otherwise.

    Args:
        app: the app whose periodic entries fire.
        owner: this beat's name in the lease; defaults to ``host.pid.random``.
        clock: the wall clock, Unix seconds (tests move it).
    """

    def __init__(self, app: App, *, owner: str | None = None, clock: Callable[[], float] = time.time) -> None:
        self.app = app
        self.owner = owner or f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:6]}"
        self.clock = clock
        self.leading = False
        self.lease_name = f"beat:{app.name}"
        settings = app.settings
        self.grace = datetime.timedelta(seconds=settings.beat_grace)
        # Longer than any beat may consider the slot due (grace), plus two lease times of hand-over.
        self.claim_ttl = settings.beat_grace + 2 * settings.beat_lease + 60.0
        #: Slots this beat claimed, failed to enqueue and could not give back, by slot key.
        self.owed: dict[str, _Owed] = {}

    def run(self, stop: threading.Event) -> None:
        """Tick until ``stop`` is set, then give the lease up so a standby takes over at once."""
        log.info("beat %s started for app %s: %d entr(ies)", self.owner, self.app.name, len(self.app.schedule))
        try:
            while not stop.is_set():
                stop.wait(self._safe_tick())
        finally:
            self._settle_owed()
            if self.leading:
                with contextlib.suppress(BrokerError):
                    self.app.backend.release_lease(self.lease_name, self.owner)
                log.info("beat %s released the leader lease", self.owner)

    def _settle_owed(self) -> None:
        """On stop: one last try at the slots this beat owes; no other beat may fire them (it holds their claims)."""
        if not self.owed:
            return
        with contextlib.suppress(BrokerError):
            self._pay_owed()
        for key in self.owed:
            log.error("beat %s stops owing %s: the broker did not answer; that slot is lost", self.owner, key)

    def _safe_tick(self) -> float:
        try:
            return self.tick()
        except BrokerError as exc:  # the broker or backend is down: keep trying; the lease lapses meanwhile
            log.warning("beat %s: %s", self.owner, exc)
        except Exception:  # a bug must not stop the schedule: log it whole and tick again
            log.exception("beat %s: tick failed", self.owner)
        self.leading = False
        return self.app.settings.beat_interval

    def tick(self) -> float:
        """Take or renew the lease; when leading, fire every due slot. Returns the seconds to sleep.

        Raises:
            BrokerError: the broker or backend did not answer (the slots wait for a later tick).
        """
        settings = self.app.settings
        self._pay_owed()
        deadline = time.monotonic() + settings.beat_lease  # the lease taken below lasts at least until then
        leading = self.app.backend.acquire_lease(self.lease_name, self.owner, settings.beat_lease)
        if leading != self.leading:
            log.info("beat %s is %s", self.owner, "now leading" if leading else "standing by")
            self.leading = leading
        if not leading:
            return settings.beat_interval
        now = self.now()
        try:
            for entry in self.app.schedule.values():
                self._run_guarded(entry, now, deadline)
        except _LeaseLapsed:
            log.warning("beat %s stalled past its lease; the slots still due wait for its next tick", self.owner)
            return MIN_SLEEP
        return max(MIN_SLEEP, min(settings.beat_interval, self._until_next(self.now())))

    def _run_guarded(self, entry: Entry, now: datetime.datetime, deadline: float) -> None:
        """Run one entry; any conveyor error but the broker's is logged and spares the other entries."""
        try:
            self.run_entry(entry, now, deadline)
        except BrokerError:
            raise
        except ConveyorError as exc:  # one bad entry (e.g. a message over the size limit) spares the others
            log.error("beat %s: entry %s failed: %s", self.owner, entry.name, exc)

    def now(self) -> datetime.datetime:
        """The clock as an aware UTC datetime."""
        return datetime.datetime.fromtimestamp(self.clock(), UTC)

    def run_entry(self, entry: Entry, now: datetime.datetime, deadline: float = math.inf) -> None:
        """Fire the slots of ``entry`` due at ``now``, recording each one, then how far the plan got.

        Raises:
            _LeaseLapsed: this beat passed ``deadline``; what it did not record waits for a later tick.
        """
        last = self.last_fired(entry)
        todo = plan(entry.schedule, last, now, self.grace, entry.missed, catch_up=entry.catch_up)
        for slot in todo.fire:
            _check_lease(deadline)  # a stalled beat claims nothing more...
            self.fire(entry, slot, deadline)
            _check_lease(deadline)  # ...and records nothing: the current leader records (or it does, next tick)
            self._record(entry, slot)
        if todo.last != last and not todo.fire:
            _check_lease(deadline)
            self._record(entry, todo.last)

    def fire(self, entry: Entry, slot: datetime.datetime, deadline: float = math.inf) -> bool:
        """Enqueue the run of ``slot`` unless some beat claimed it already; True when this call enqueued it.

        Once the claim is won the slot is enqueued whatever happened since (see module docstring).

        Args:
            deadline: ``time.monotonic()`` past which this beat's lease may have lapsed; it decides,
                when the enqueue fails, whether the claim may be given back (see :meth:`_give_back`).

        Raises:
            BrokerError: the enqueue failed; the slot fires on a later tick (or from :attr:`owed`).
            ConveyorError: the entry's message cannot be built or sent (e.g. too large); the slot is lost.
        """
        key = slot_key(self.app.name, entry.name, slot)
        claimed = time.monotonic()  # the claim lives at least claim_ttl from here
        if not self.app.backend.claim(key, self.claim_ttl):
            return False
        try:
            return self._send(entry, slot)
        except BrokerError:  # transient: the slot must still fire. Any other error is the entry's own and
            # would fail again: the claim stays and the slot is recorded as fired (failed, logged) next tick.
            self._give_back(key, _Owed(entry, slot, claimed + self.claim_ttl - self.app.settings.beat_lease), deadline)
            raise

    def _send(self, entry: Entry, slot: datetime.datetime) -> bool:
        """Enqueue the run of ``slot`` (this beat holds its claim); False when the broker holds it already."""
        name = self.app.name
        # An aware moment: a call's expires= reads a number as seconds from now (task.py, ``moment``).
        expires = (
            None if entry.expires is None else datetime.datetime.fromtimestamp(slot.timestamp() + entry.expires, UTC)
        )
        headers = {
            **entry.signature.options.get("headers", {}),
            "beat_entry": entry.name,
            "beat_slot": slot.isoformat(),
        }
        message = entry.signature.message(
            self.app,
            task_id=slot_task_id(name, entry.name, slot),
            key=slot_key(name, entry.name, slot),
            queue=entry.queue,
            priority=entry.priority,
            expires=expires,
            headers=headers,
        )
        try:
            [task_id] = self.app.send([message])
        except DuplicateTaskId as exc:  # an earlier send of this slot reached the broker (its reply was lost)
            log.info("beat %s: %s for %s is already enqueued as %s", self.owner, entry.name, slot, exc.task_id)
            return False
        log.info("beat %s fired %s for %s as %s", self.owner, entry.name, slot.isoformat(), task_id)
        return True

    def _give_back(self, key: str, owed: _Owed, deadline: float) -> None:
        """After a failed enqueue: unclaim while still leading, so a later tick fires the slot; else owe it.

        Past the deadline another beat may lead and may have found the claim and recorded the slot:
        unclaiming then would drop it. So would a failed unclaim (the backend down too). In both
        cases this beat keeps the claim and enqueues the slot itself when the broker answers.
        """
        if time.monotonic() < deadline:
            try:
                self.app.backend.unclaim(key)
            except ConveyorError as exc:
                log.warning("beat %s could not give back the claim of %s: %s", self.owner, key, exc)
            else:
                log.warning("beat %s could not enqueue %s; a later tick fires it", self.owner, key)
                return
        self.owed[key] = owed
        log.warning("beat %s keeps its claim of %s and enqueues it when the broker answers", self.owner, key)

    def _pay_owed(self) -> None:
        """Enqueue the slots this beat owes (leading or not: it holds their claims), while they are still on time.

        Raises:
            BrokerError: the broker still does not answer (the rest stay owed).
        """
        for key, owed in list(self.owed.items()):
            late = self.now() - owed.slot > self.grace and owed.entry.missed == "skip"
            if late or time.monotonic() > owed.until:
                del self.owed[key]
                log.error("beat %s drops %s of %s: it could not be enqueued in time", self.owner, owed.slot, key)
                continue
            self._send(owed.entry, owed.slot)
            del self.owed[key]

    def last_fired(self, entry: Entry) -> datetime.datetime | None:
        """The last slot recorded for ``entry`` (fired, or skipped by its policy), None if it never ran."""
        raw = self.app.backend.get_value(_state_key(self.app.name, entry.name))
        return None if raw is None else datetime.datetime.fromtimestamp(int(raw) / 1000, UTC)

    def _record(self, entry: Entry, slot: datetime.datetime) -> None:
        self.app.backend.set_value(_state_key(self.app.name, entry.name), str(slot_ms(slot)).encode())

    def _until_next(self, now: datetime.datetime) -> float:
        """Seconds until the earliest next slot of any entry (the beat wakes for it)."""
        upcoming = [entry.schedule.next_fire(now) for entry in self.app.schedule.values()]
        return min((slot - now).total_seconds() for slot in upcoming) if upcoming else self.app.settings.beat_interval


def _check_lease(deadline: float) -> None:
    if time.monotonic() > deadline:
        raise _LeaseLapsed


def _state_key(app_name: str, entry: str) -> str:
    return f"beat:{app_name}:{entry}:last"


@dataclasses.dataclass(frozen=True, slots=True)
class EntryInfo:
    """One entry as ``conveyor beat --list`` and ``conveyor status`` show it."""

    name: str
    task: str
    schedule: str
    missed: str
    catch_up: bool
    next_run: str
    last_fired: str | None

    def to_dict(self) -> dict[str, str | None]:
        """JSON-ready form."""
        return dataclasses.asdict(self)


def overview(app: App, *, with_state: bool = True) -> list[EntryInfo]:
    """Every entry of ``app`` with its next run time (and, ``with_state``, the last slot recorded in the backend)."""
    beat = Beat(app, owner="overview")
    now = beat.now()
    rows = []
    for entry in app.schedule.values():
        last = beat.last_fired(entry) if with_state else None
        rows.append(
            EntryInfo(
                name=entry.name,
                task=repr(entry.signature),
                schedule=entry.schedule.describe(),
                missed=entry.missed,
                catch_up=entry.catch_up,
                next_run=entry.schedule.next_fire(now).isoformat(),
                last_fired=None if last is None else last.isoformat(),
            )
        )
    return rows


def check_shareable(app: App) -> None:
    """Refuse a ``memory://`` app (a beat in its own process could never reach its workers), and URLs
    the broker or backend refuse: an error at start, rather than a logged traceback on every tick.

    Raises:
        ConfigurationError: the broker or result backend lives in one process's memory, or its URL is wrong.
    """
    if app.settings.broker_url.startswith("memory:") or app.settings.result_url.startswith("memory:"):
        raise ConfigurationError("beat needs a broker and backend other processes reach (sqlite:///path or redis://)")
    _ = (app.broker, app.backend)  # built from their URLs (they connect on first use)


def run_forever(app: App, *, parent: int | None = None) -> int:
    """What ``conveyor beat`` runs: a Beat until SIGTERM or SIGINT; returns the exit code.

    Args:
        parent: stop as well when this process is no longer our parent (``worker --beat`` passes
            its own pid, so a worker killed with -9 does not leave its beat behind).
    """
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("beat stopping (%s)", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if parent is not None:
        threading.Thread(target=_watch_parent, args=(parent, stop, app.settings.beat_interval), daemon=True).start()
    Beat(app).run(stop)
    return 0


def _watch_parent(parent: int, stop: threading.Event, every: float) -> None:
    while not stop.wait(every):
        if os.getppid() != parent:
            log.warning("beat stopping: its worker (pid %d) is gone", parent)
            stop.set()
