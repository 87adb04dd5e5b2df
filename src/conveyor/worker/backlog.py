"""Backlog: the deliveries a one-slot child reserved ahead of its slot, and the watch on the running task.

Reserving one task per round trip leaves a short task's worker waiting on the network most of
the time, so a process-pool child reserves up to ``prefetch`` tasks at once and runs them one by
one. Prefetching must not let a long task hold short ones hostage (DESIGN.md: no prefetch
starvation), so a watch thread looks at the running task: once it has run ``hold`` seconds, the
child's ``on_long`` callback runs once for it, and gives the unstarted tasks back to the queue at
once, where idle workers take them. Short tasks pay nothing for the watch but a lock per task:
while tasks keep coming the watch looks every ``hold`` seconds on its own (so no task start has to
wake a thread), and after ``IDLE_AFTER`` seconds without a task it sleeps until the next one starts.

"Has run" leaves out the time the child waited for a CPU. On a loaded machine the scheduler takes
the CPU from a child for milliseconds at a time, also in the middle of a no-op task: counted in
wall time, such a task looked long, and a bench drain at load 18 gave back 3,235 of 20,000 no-op
tasks (a round trip each, then reserved again). So once a task passed ``hold`` of wall time, the
watch reads the running thread's run-queue wait (Linux: ``/proc/self/task/<tid>/schedstat``, no
cost per task) and calls ``on_long`` only once the task ran another ``hold`` off the run queue:
running, sleeping or waiting on I/O, as a long task does. A long task's batch-mates so go back
after about twice ``hold``; where the kernel gives no schedstat, after ``hold`` of wall time.

Every delivery in the backlog is leased and heartbeated like a running one, so the guarantees of
a reserved task hold for it: a crash of the child returns it, a graceful stop returns it unrun.
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
import time
from collections.abc import Callable, Sequence

from conveyor.brokers import Delivery

#: Seconds a reserved task may wait for a slot while every slot is busy before it goes back to the
#: queue, where idle workers take it (and, in the process pool, seconds a task runs, not counting its
#: waits for a CPU, before the ones prefetched behind it go back). Short enough that a long task
#: delays no batch-mate noticeably.
PREFETCH_HOLD = 0.005
#: Seconds without a task start after which the watch stops looking every ``hold`` and sleeps
#: until a task starts (an idle worker costs no wake-ups; a busy one no wake-up per task).
IDLE_AFTER = 1.0
#: A full batch whose tasks all ran, in under this many seconds, doubles the next reservation.
FAST_BATCH = 0.02
#: The most a batch grows to, as a multiple of the ``prefetch`` setting.
GROWTH = 4


class BatchSize:
    """How many tasks a one-slot child reserves next: ``prefetch``, grown while full batches run fast.

    A reservation costs a round trip, two context switches of the child and the broker's fixed work
    for a script call, whatever its size: on a deep queue of short tasks, batches of 64 took 15-20% less
    CPU per task than batches of 16 (worker and Redis together, bench/noop_tree.py). But a batch is
    also work one child holds while others may idle. So the next batch doubles (up to ``GROWTH`` times
    ``prefetch``) only after a batch that came full (the queue had more) and whose tasks all ran here in
    under ``FAST_BATCH`` seconds, and falls back to ``prefetch`` after any other: a grown batch holds about
    twice ``FAST_BATCH`` of work (40 ms), half what 16 tasks just short of the long-task hold (5 ms) do.
    ``prefetch = 1`` (prefetching off) never grows.
    """

    def __init__(self, prefetch: int) -> None:
        self.base = prefetch
        self.most = prefetch * GROWTH if prefetch > 1 else 1
        #: The size of the next reservation.
        self.next = prefetch

    def ran(self, count: int, seconds: float) -> None:
        """The last batch (``next`` asked) ended: ``count`` of its tasks ran here, in ``seconds`` all told."""
        if count >= self.next and seconds < FAST_BATCH:
            self.next = min(self.next * 2, self.most)
        else:
            self.next = self.base


class Backlog:
    """Reserved-but-unstarted deliveries of one slot, in the order the broker handed them out.

    Args:
        hold: seconds a task may run before ``on_long`` is called for it.
        on_long: called once per task that runs longer than ``hold``, from the watch thread.
    """

    def __init__(self, hold: float, on_long: Callable[[], None]) -> None:
        self.hold = hold
        self._on_long = on_long
        self._queue: collections.deque[Delivery] = collections.deque()
        self._lock = threading.Lock()
        self._serial = 0  # counts started tasks, so the watch tells one task from the next
        self._started: float | None = None  # monotonic start of the running task; None between tasks
        self._last_start = 0.0
        self._watch_idle = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="conveyor-backlog", daemon=True)
        self._files: tuple[int, int] | None = None  # the task thread's /proc stat and schedstat, open for pread
        self._probe: tuple[int, float, int, int] | None = None  # serial, monotonic time, CPU time, run-queue wait

    def start(self) -> None:
        """Start the watch thread; the calling thread is the one that runs the tasks."""
        task = f"/proc/self/task/{threading.get_native_id()}"
        with contextlib.suppress(OSError):  # not Linux, or no schedstat: the hold counts wall time
            stat = os.open(f"{task}/stat", os.O_RDONLY)
            try:
                self._files = stat, os.open(f"{task}/schedstat", os.O_RDONLY)
            except OSError:
                os.close(stat)
        self._thread.start()

    def stop(self) -> None:
        """Stop the watch thread (the caller returns what is left with :meth:`take_unstarted`)."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if self._files is not None and not self._thread.is_alive():
            for fd in self._files:
                os.close(fd)
            self._files = None

    def fill(self, deliveries: Sequence[Delivery]) -> None:
        """Add freshly reserved deliveries behind the ones waiting."""
        with self._lock:
            self._queue.extend(deliveries)

    def next(self) -> Delivery | None:
        """The next delivery to run, now marked running; None when the backlog is empty."""
        with self._lock:
            if not self._queue:
                return None
            self._serial += 1
            self._started = self._last_start = time.monotonic()
            if self._watch_idle:
                self._wake.set()
            return self._queue.popleft()

    def finished(self) -> None:
        """The running task ended (whatever its outcome)."""
        with self._lock:
            self._started = None

    def take_unstarted(self) -> list[Delivery]:
        """Remove and return every delivery not started yet (to give back to the queue)."""
        with self._lock:
            taken = list(self._queue)
            self._queue.clear()
        return taken

    def __len__(self) -> int:
        with self._lock:
            return len(self._queue)

    def _watch(self) -> None:
        flagged = 0  # the serial of the last task handed to on_long
        while not self._stop.is_set():
            self._wake.clear()  # before reading the state, so a task starting after the read wakes the wait
            with self._lock:
                serial, started = self._serial, self._started
                quiet = time.monotonic() - self._last_start > IDLE_AFTER
                # Idle for a while, or the running task was already handled: sleep until a task starts.
                self._watch_idle = (started is None and quiet) or (started is not None and serial == flagged)
            if self._watch_idle:
                self._wake.wait()
                continue
            if started is None:  # between tasks of a busy stretch: look again soon
                self._stop.wait(self.hold)
                continue
            left = started + self.hold - time.monotonic()
            if left <= 0:
                left = self._left_off_the_run_queue(serial)
            if left > 0:
                self._stop.wait(left)
                continue
            flagged = serial
            self._on_long()

    def _left_off_the_run_queue(self, serial: int) -> float:
        """Seconds the running task (past ``hold`` of wall time) must still run, not counting its waits for a CPU.

        The first look at a task samples its thread's CPU time and run-queue wait; 0 (long) once, since
        then, the thread ran ``hold`` on a CPU, or is asleep (sleeping, blocked on I/O) and spent ``hold``
        off the run queue. A thread runnable now may be waiting for a CPU since before the sample (the
        kernel adds a wait to schedstat only when it ends), so only its CPU time counts then.
        """
        sample = self._sample()
        if sample is None:
            return 0.0
        now, (runnable, ran, waited) = time.monotonic(), sample
        if self._probe is None or self._probe[0] != serial:
            self._probe = (serial, now, ran, waited)
            return self.hold
        _, since, ran_since, waited_since = self._probe
        if runnable:
            return max(0.0, self.hold - (ran - ran_since) / 1e9)
        return max(0.0, self.hold - (now - since) + (waited - waited_since) / 1e9)

    def _sample(self) -> tuple[bool, int, int] | None:
        """The task thread's state: runnable (running or waiting for a CPU), CPU time and run-queue wait (ns).

        None where the kernel gives no schedstat (then the hold counts wall time).
        """
        if self._files is None:
            return None
        stat, schedstat = self._files
        try:
            state = os.pread(stat, 512, 0).rsplit(b")", 1)[1].split()[0]
            ran, waited = os.pread(schedstat, 128, 0).split()[:2]
            return state == b"R", int(ran), int(waited)
        except (OSError, IndexError, ValueError):
            return None
