"""ChildBoard: the few bytes of shared memory a child writes and its supervisor reads.

Created by the supervisor *before* ``fork()`` (plain anonymous shared memory, no lock, no pipe
message, no system call per write), so the hot path pays one memory write per task:

- ``beat``: the monotonic time of the child's last lease heartbeat. A task that holds the GIL
  (a long C call) starves the child's heartbeat thread; the supervisor sees the stamp go stale
  and extends the child's leases itself (``Broker.extend_owner``), so a live task is never
  handed to another worker.
- one fixed-width area per slot holding the id of the task that slot is running (empty between
  tasks). When the child dies, the supervisor reads them: only the tasks that were running count
  a delivery (``Broker.release_owner(owner, running)``); the prefetched batch-mates a poison task
  took down with it go back without counting. An id that does not fit marks the slot *unknown*,
  and then every message of the child counts, as before.

Readers look at a dead child's areas (no writer left) or at the stamp (one aligned double), so
no lock is needed. The child's own heartbeat reads the areas too (the running ids are marked
*started* at the broker, see ``Broker.extend``); a torn read there only misses one beat's mark.
"""

from __future__ import annotations

import ctypes
import time
from multiprocessing.context import BaseContext

#: Bytes per slot for the running task's id (ids are UUIDs, 36 bytes; user-chosen ids may be longer).
SLOT_WIDTH = 200
#: Written in a slot whose running task's id does not fit: the supervisor then counts every message.
_UNKNOWN = b"\x01"


class ChildBoard:
    """Shared memory between one child and its supervisor: heartbeat stamp and running ids.

    Args:
        ctx: the multiprocessing context the child is forked with.
        slots: the child's slots (1 for the process pool, N for the thread pool).
    """

    def __init__(self, ctx: BaseContext, slots: int) -> None:
        self.slots = slots
        self._beat = ctx.RawValue(ctypes.c_double, time.monotonic())
        self._ids = ctx.RawArray(ctypes.c_char, slots * SLOT_WIDTH)
        self._view: memoryview | None = None  # bytes view of _ids, made on first write (it cannot be pickled)

    # -- written by the child ------------------------------------------------------------------

    def stamp(self) -> None:
        """Record that the child's lease heartbeat just succeeded (or had nothing to extend)."""
        self._beat.value = time.monotonic()

    def running(self, slot: int, task_id: str) -> None:
        """Record that ``slot`` started the delivery ``task_id``."""
        raw = task_id.encode()
        if not raw or len(raw) >= SLOT_WIDTH or b"\0" in raw or raw[0] == _UNKNOWN[0]:
            raw = _UNKNOWN
        view = self._view
        if view is None:
            view = self._view = memoryview(self._ids).cast("B")
        start = slot * SLOT_WIDTH
        end = start + len(raw)
        view[start:end] = raw
        view[end] = 0

    def idle(self, slot: int) -> None:
        """Record that ``slot`` runs nothing now."""
        self._ids[slot * SLOT_WIDTH] = b"\0"

    # -- read by the child's heartbeat and by the supervisor ---------------------------------------

    def running_now(self) -> list[str]:
        """The ids the slots are running, an unknown one left out: the child's heartbeat marks them started.

        Read by the child itself while its slots write, so a slot may be caught mid-write: a torn
        id matches no held delivery and marks nothing (the next beat reads it whole).
        """
        return [value.decode(errors="replace") for value in self._values() if value != _UNKNOWN]

    def beat_age(self) -> float:
        """Seconds since the child's last heartbeat stamp."""
        return time.monotonic() - float(self._beat.value)

    def running_ids(self) -> list[str] | None:
        """The ids the slots were running; None when one of them is unknown (count everything)."""
        values = self._values()
        if _UNKNOWN in values:
            return None
        return [value.decode(errors="replace") for value in values]

    def _values(self) -> list[bytes]:
        """The non-empty slot areas, raw."""
        raw = bytes(self._ids.raw)
        areas = (raw[slot * SLOT_WIDTH : (slot + 1) * SLOT_WIDTH].split(b"\0", 1)[0] for slot in range(self.slots))
        return [area for area in areas if area]
