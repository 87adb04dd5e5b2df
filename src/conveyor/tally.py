"""What a worker counts for the engine's counters: the task series the dashboard's ``/metrics`` serves.

Kept apart from metrics.py so that a worker counts without importing prometheus-client (it is
imported only for ``--metrics-port``); metrics.py reads these counters back into Prometheus series.
"""

from __future__ import annotations

import bisect

__all__ = ["COUNTS_KEY", "RAN", "RUNTIME_BUCKETS", "SEP", "Tally"]

#: Buckets of the runtime histogram, in seconds (no-op tasks to long jobs).
RUNTIME_BUCKETS = (0.001, 0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0)
#: The final states whose runtime is observed (the task ran).
RAN = frozenset({"SUCCESS", "FAILURE", "RETRY"})
#: The engine's counter set the workers add their tallies to (``Store.add_counts``).
COUNTS_KEY = "metrics"
SEP = "\x1f"  # between the parts of a counter's name: never in a task or queue name one types


class Tally:
    """What one worker counted since its last publish, added to the engine's counters then (:meth:`take`).

    Keyed by tuples while counting (a few dict operations per task); flattened into counter names once per
    publish: ``t|task|state``, ``b|task|bucket`` (runtimes per bucket, not cumulative), ``s|task`` (runtime
    sum), ``q|queue`` (received), ``d|queue`` (redeliveries), ``|`` being an unprintable separator.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._ended: dict[tuple[str, str], int] = {}
        self._buckets: dict[tuple[str, int], int] = {}
        self._runtime: dict[str, float] = {}
        self._received: dict[str, int] = {}
        self._redelivered: dict[str, int] = {}

    def __bool__(self) -> bool:
        return bool(self._ended or self._received)

    def received(self, queue: str, deliveries: int) -> None:
        """Count a reserved delivery (a redelivery when it was handed out before)."""
        self._received[queue] = self._received.get(queue, 0) + 1
        if deliveries > 1:
            self._redelivered[queue] = self._redelivered.get(queue, 0) + 1

    def ended(self, task: str, state: str, runtime: float) -> None:
        """Count a delivery that ended in ``state``, and its runtime if it ran."""
        key = (task, state)
        self._ended[key] = self._ended.get(key, 0) + 1
        if state in RAN:
            bucket = (task, bisect.bisect_left(RUNTIME_BUCKETS, runtime))
            self._buckets[bucket] = self._buckets.get(bucket, 0) + 1
            self._runtime[task] = self._runtime.get(task, 0.0) + runtime

    def take(self) -> dict[str, float]:
        """The counter increments counted so far, by counter name; start afresh."""
        s = SEP
        counts: dict[str, float] = {f"t{s}{task}{s}{state}": n for (task, state), n in self._ended.items()}
        counts |= {f"b{s}{task}{s}{index}": n for (task, index), n in self._buckets.items()}
        counts |= {f"s{s}{task}": total for task, total in self._runtime.items()}
        counts |= {f"q{s}{queue}": n for queue, n in self._received.items()}
        counts |= {f"d{s}{queue}": n for queue, n in self._redelivered.items()}
        self._reset()
        return counts

    def restore(self, counts: dict[str, float]) -> None:
        """Put back increments :meth:`take` returned that could not be added (they go with the next publish)."""
        for name, value in counts.items():
            kind, *labels = name.split(SEP)
            if kind == "t":
                self._ended[(labels[0], labels[1])] = self._ended.get((labels[0], labels[1]), 0) + int(value)
            elif kind == "b":
                bucket = (labels[0], int(labels[1]))
                self._buckets[bucket] = self._buckets.get(bucket, 0) + int(value)
            elif kind == "s":
                self._runtime[labels[0]] = self._runtime.get(labels[0], 0.0) + value
            elif kind == "q":
                self._received[labels[0]] = self._received.get(labels[0], 0) + int(value)
            elif kind == "d":
                self._redelivered[labels[0]] = self._redelivered.get(labels[0], 0) + int(value)
