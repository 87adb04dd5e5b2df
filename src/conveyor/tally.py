"""Task counts as counter increments: what the Prometheus task series are made of, on a worker and in the engine.

A worker child counts what its tasks did in bulk, once per report to its supervisor (:func:`count`,
in C-level passes over the report's tuples: no Python step per task), and sends the counts with
the report (worker/events.py ``Happened``). The supervisor only adds them up (:func:`add`): into
its own totals for ``--metrics-port``, and into the increments it adds to the engine's counters
(``Store.add_counts``, key :data:`COUNTS_KEY`) with each event batch, which the dashboard serves.
metrics.py turns either set of totals into the Prometheus series.

Counter names, ``|`` standing for the unprintable :data:`SEP`::

    t|task|state    deliveries of ``task`` that ended in ``state`` (SUCCESS, FAILURE, RETRY, REVOKED, DEAD, ABANDONED)
    b|task|i        runs of ``task`` whose runtime fell in bucket ``i`` of RUNTIME_BUCKETS (not cumulative)
    s|task          seconds ``task`` ran, in all
    q|queue         deliveries reserved from ``queue``
    d|queue         of those, deliveries of a message handed out before (a crash, a lost lease)

Kept apart from metrics.py so that a worker counts without importing prometheus-client.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import math
import operator
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["COUNTS_KEY", "RAN", "RUNTIME_BUCKETS", "SEP", "add", "count"]

#: Buckets of the runtime histogram, in seconds (no-op tasks to long jobs).
RUNTIME_BUCKETS = (0.001, 0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0)
#: The final states whose runtime is observed (the task ran).
RAN = frozenset({"SUCCESS", "FAILURE", "RETRY"})
#: The final states counted (a delivery given back or a dropped duplicate ran nothing and is not).
FINAL = RAN | {"REVOKED", "DEAD", "ABANDONED"}
#: The engine's counter set the workers add to (``Store.add_counts``).
COUNTS_KEY = "metrics"
#: Between the parts of a counter's name: never in a task or queue name one types.
SEP = "\x1f"

_FIRST_BOUND = RUNTIME_BUCKETS[0]
_queue = operator.itemgetter(1)
_deliveries = operator.itemgetter(2)
_task = operator.itemgetter(1)
_state = operator.itemgetter(2)
_runtime = operator.itemgetter(3)


def count(received: Sequence[Sequence[Any]], ended: Sequence[Sequence[Any]]) -> dict[str, float]:
    """The counter increments of a report: ``received`` ``(id, queue, deliveries, at)``, ``ended`` ``(id, task, state,
    runtime, at)`` tuples (worker/events.py).

    Each step is a C-level pass over the tuples (no Python step per task); the usual report (one queue,
    one task, one state, every run under a millisecond) takes the cheapest passes (``list.count``).
    """
    counts: dict[str, float] = {}
    if received:
        queues = list(map(_queue, received))
        for queue, n in _tally(queues):
            counts[f"q{SEP}{queue}"] = n
        if max(map(_deliveries, received)) > 1:
            again = itertools.compress(queues, map((1).__lt__, map(_deliveries, received)))
            for queue, n in collections.Counter(again).items():
                counts[f"d{SEP}{queue}"] = n
    if ended:
        tasks = list(map(_task, ended))
        states = list(map(_state, ended))  # Ended members: a StrEnum hashes as its (cached) str
        runtimes = list(map(_runtime, ended))
        if tasks.count(tasks[0]) == len(tasks):  # one task's runs
            _count_task(counts, tasks[0], states, runtimes)
        else:
            for task in set(tasks):
                mine = list(map(task.__eq__, tasks))
                _count_task(
                    counts, task, list(itertools.compress(states, mine)), list(itertools.compress(runtimes, mine))
                )
    return counts


def _tally(values: list[Any]) -> Iterable[tuple[Any, int]]:
    """``Counter(values).items()``, with one pass of ``list.count`` when every value is the first one."""
    if values.count(values[0]) == len(values):
        return [(values[0], len(values))]
    return collections.Counter(values).items()


def _count_task(counts: dict[str, float], task: str, states: list[Any], runtimes: list[float]) -> None:
    ran: list[float] = []
    for state, n in _tally(states):
        if state in FINAL:
            counts[f"t{SEP}{task}{SEP}{state}"] = n
        if state in RAN:
            ran = runtimes if n == len(states) else list(itertools.compress(runtimes, map(RAN.__contains__, states)))
    if not ran:
        return
    if sum(map(_FIRST_BOUND.__ge__, ran)) == len(ran):  # every run in the first bucket (no-op tasks)
        counts[f"b{SEP}{task}{SEP}0"] = len(ran)
    else:
        for index, n in collections.Counter(map(bisect.bisect_left, itertools.repeat(RUNTIME_BUCKETS), ran)).items():
            counts[f"b{SEP}{task}{SEP}{index}"] = n
    counts[f"s{SEP}{task}"] = math.fsum(ran)


def add(totals: dict[str, float], counts: Mapping[str, float]) -> None:
    """Add ``counts`` into ``totals`` (one step per counter name, not per task)."""
    for name, value in counts.items():
        totals[name] = totals.get(name, 0) + value


def parse(counts: Mapping[str, float]) -> Iterable[tuple[str, list[str], float]]:
    """Each counter as ``(kind, labels, value)``; names of another version are left out."""
    for name, value in sorted(counts.items()):
        kind, *labels = name.split(SEP)
        if len(labels) == (2 if kind in ("t", "b") else 1):
            yield kind, labels, value
