"""The chaos run's audit (pure): the execution log against the promise, with a precise message per breach.

The log holds one line per event, in the order they were appended: ``i pid`` (an execution of
task ``i`` started in ``pid``), ``i pid done`` (it ended) and ``i pid crash`` (a poison task is about
to take its process down). A crash counts as a kill of that pid. The audit checks:

- every task but the poison completed at least once;
- an execution that never completed ran in a killed (or crashed) pid;
- a task ran again only right after an execution in a pid killed (or crashed) before the rerun
  started: the driver records, with each pid it kills, how many log lines there were just before
  the kill, so a rerun that began while the first run's process still lived is never excused by a
  kill that came later;
- every poison task is in the dead-letter queue, and nothing else is.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
from collections.abc import Collection, Mapping

from tests.chaos_faults import FaultCounts


@dataclasses.dataclass(slots=True)
class ChaosReport:
    """What the audit found; ``problems`` is empty when the promise held."""

    tasks: int
    faults: frozenset[str] = frozenset({"kill"})
    executions: int = 0
    completed: int = 0
    duplicates: int = 0
    explained: int = 0
    counts: FaultCounts = dataclasses.field(default_factory=FaultCounts)
    seconds: float = 0.0
    problems: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        """The problems (the first 30), then the figures one per line, as docs/guarantees.md quotes them."""
        shown = [f"  - {p}" for p in self.problems[:30]]
        if len(self.problems) > 30:
            shown.append(f"  ... and {len(self.problems) - 30} more")
        return "\n".join(
            [
                *shown,
                f"tasks:                          {self.tasks}",
                f"executions:                     {self.executions}",
                f"tasks completed:                {self.completed}",
                f"duplicates (extra executions):  {self.duplicates}",
                f"duplicates explained by a kill: {self.explained}",
                *self.counts.lines(self.faults),
                f"seconds:                        {self.seconds:.1f}",
                f"problems:                       {len(self.problems)}",
            ]
        )


@dataclasses.dataclass(slots=True)
class Execution:
    """One execution of a task: where it ran and the log lines where it started and ended."""

    pid: int
    start: int
    end: int | None = None
    crashed: bool = False

    @property
    def done(self) -> bool:
        return self.end is not None and not self.crashed

    def describe(self) -> str:
        """``pid 12 (lines 3-9)``, ``pid 12 (line 3, never ended)`` or ``pid 12 (line 3, crashed)``."""
        if self.end is None:
            return f"pid {self.pid} (line {self.start}, never ended)"
        return (
            f"pid {self.pid} (line {self.start}, crashed)"
            if self.crashed
            else f"pid {self.pid} (lines {self.start}-{self.end})"
        )


def audit(
    log_lines: list[str],
    killed: Mapping[int, int] | Collection[int],
    tasks: int,
    *,
    poison: Collection[int] = (),
    gil: Collection[int] = (),
    dead: Collection[int] = (),
) -> ChaosReport:
    """Check the execution log against the promise (pure).

    Args:
        log_lines: the chaos log, in the order the lines were appended.
        killed: every pid the driver killed → the number of log lines just before the kill (a
            plain collection of pids means killed before line 1 of the log).
        tasks: how many tasks were enqueued (ids 0 to tasks - 1).
        poison: the ids of the poison tasks (crash every time; must end dead-lettered, need not complete).
        gil: the ids of the GIL-holding tasks (only named as such in messages).
        dead: the ids found in the dead-letter queue at the end.
    """
    runs, faults = executions(log_lines), windows(log_lines)
    lost = dict(killed) if isinstance(killed, Mapping) else dict.fromkeys(killed, 0)
    for e in (e for runs_of in runs.values() for e in runs_of if e.crashed):
        lost.setdefault(e.pid, e.end or 0)
    report = ChaosReport(tasks)
    special: list[str] = []  # the problems of poison and GIL tasks come first: usually the cause of the rest
    for i in range(tasks):
        runs_of = runs.get(i, [])
        label = "poison task" if i in poison else "GIL task" if i in gil else "task"
        report.executions += len(runs_of)
        report.completed += any(e.done for e in runs_of)
        report.duplicates += max(0, len(runs_of) - 1)
        report.explained += sum(1 for before, after in itertools.pairwise(runs_of) if _died_first(before, after, lost))
        found = _problems_of(i, label, runs_of, lost, faults, poison=i in poison)
        found += _dead_letter_problems(i, label, runs_of, poison=i in poison, dead=i in dead)
        (report.problems if label == "task" else special).extend(found)
    report.problems = special + report.problems
    return report


def executions(log_lines: list[str]) -> dict[int, list[Execution]]:
    """Task id → its executions in start order (line numbers count from 1)."""
    runs: dict[int, list[Execution]] = collections.defaultdict(list)
    for number, line in enumerate(log_lines, start=1):
        fields = line.split()
        if fields[0] == "#":  # a fault marker of the driver, see windows()
            continue
        i, pid = int(fields[0]), int(fields[1])
        if len(fields) == 2:
            runs[i].append(Execution(pid, number))
        else:  # the oldest open execution of this task in this pid ended
            execution = next(e for e in runs[i] if e.pid == pid and e.end is None)
            execution.end, execution.crashed = number, fields[2] == "crash"
    return runs


@dataclasses.dataclass(frozen=True, slots=True)
class Window:
    """A fault the driver injected, between two marker lines (``# stall 2 begin`` ... ``# stall 2 end``)."""

    name: str
    begin: int
    end: int | None


def windows(log_lines: list[str]) -> list[Window]:
    """The fault windows the driver marked in the log, in the order they began."""
    begun: dict[str, int] = {}
    found: list[Window] = []
    for number, line in enumerate(log_lines, start=1):
        fields = line.split()
        if fields[0] != "#":
            continue
        name = " ".join(fields[1:-1])
        if fields[-1] == "begin":
            begun[name] = number
        elif name in begun:
            found.append(Window(name, begun.pop(name), number))
    found += [Window(name, begin, None) for name, begin in begun.items()]
    return sorted(found, key=lambda w: w.begin)


#: A rerun this many log lines after a fault window ended is placed against it; a later one is not.
NEAR = 100


def _context(line: int, faults: list[Window]) -> str:
    """Where a line stands to the last fault window that began before it: `` (during stall 1)``, or ''."""
    before = [w for w in faults if w.begin < line]
    if not before:
        return ""
    last = before[-1]
    if last.end is None or line < last.end:
        return f" (it started during {last.name})"
    after = line - last.end
    return f" (it started {after} log line(s) after {last.name} ended)" if after <= NEAR else ""


def _problems_of(
    i: int, label: str, runs: list[Execution], lost: dict[int, int], faults: list[Window], *, poison: bool
) -> list[str]:
    problems = []
    if not poison and not any(e.done for e in runs):
        ran = ", ".join(e.describe() for e in runs) or "never started"
        problems.append(f"{label} {i} never completed ({len(runs)} execution(s): {ran})")
    for e in runs:
        if e.end is None and e.pid not in lost:
            problems.append(f"{label} {i} was interrupted in {e.describe()}, which was neither killed nor crashed")
    reruns = [(before, after) for before, after in itertools.pairwise(runs) if not _died_first(before, after, lost)]
    if reruns:
        before, after = reruns[0]
        more = f" (and {len(reruns) - 1} more such rerun(s), {len(runs)} executions in all)" if len(reruns) > 1 else ""
        context = _context(after.start, faults)
        problems.append(f"{label} {i} ran again in {after.describe()} {_relation(before, after)}{context}{more}")
    return problems


def _died_first(before: Execution, after: Execution, lost: dict[int, int]) -> bool:
    """Whether the first run's process was killed (or crashed) before the rerun started."""
    return before.pid in lost and lost[before.pid] < after.start


def _relation(before: Execution, after: Execution) -> str:
    """How a rerun stands to the run before it, when that run's pid was alive."""
    if before.end is None or before.end > after.start:
        return f"while live {before.describe()} was still running it (expected: no second run while it lives)"
    return f"after live {before.describe()} had completed it (expected: acknowledged, never redelivered)"


def _dead_letter_problems(i: int, label: str, runs: list[Execution], *, poison: bool, dead: bool) -> list[str]:
    crashes = sum(1 for e in runs if e.crashed)
    if poison and not dead:
        return [
            f"{label} {i} is not in the dead-letter queue ({crashes} crash(es), expected: dead after max_deliveries)"
        ]
    if dead and not poison:
        ran = ", ".join(e.describe() for e in runs) or "never started"
        return [f"{label} {i} was dead-lettered but is no poison ({len(runs)} execution(s): {ran})"]
    return []
