"""Medians, ratios, the rich tables and the JSON file.

Each figure is the median over the runs of one system on one workload. A system whose runs did
not all finish with every task counted shows its failure (``DROPPED k``, ``TIMEOUT``, ``ERROR``,
``unavailable``) instead of its main figure, and no ratio. Ratios compare each peer with conveyor
so that **a ratio above 1 always means conveyor is better**: for rates ``conveyor ÷ peer``, for
times and latencies ``peer ÷ conveyor``.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

#: The conveyor rows the ratio columns compare with, in column order.
REFERENCES = ("conveyor-redis", "conveyor-sqlite", "conveyor-amqp")


def _rate(v: float) -> str:
    return f"{v:,.0f}"


def _seconds(v: float) -> str:
    return f"{v:.2f}"


def _ms(v: float) -> str:
    return f"{v:.2f}"


def _us(v: float) -> str:
    return f"{v:,.1f}"


def _mb(v: float) -> str:
    return f"{v:,.0f}"


@dataclasses.dataclass(frozen=True)
class WorkloadSpec:
    """How one workload is shown.

    Attributes:
        title: the table's title.
        columns: (figure, header, formatter) in order.
        main: the figure the ratio is computed on.
        higher_is_better: True for rates, False for times.
        note_field: the record field shown as the configuration column.
    """

    title: str
    columns: tuple[tuple[str, str, Callable[[float], str]], ...]
    main: str
    higher_is_better: bool
    note_field: str = "config"


SPECS: dict[str, WorkloadSpec] = {
    "throughput": WorkloadSpec(
        "1. Throughput without results: {n:,} no-op tasks enqueued one by one, then the workers started",
        (
            ("enqueue_rate", "enqueue/s", _rate),
            ("startup_s", "start-up s", _seconds),
            ("cpu_us_per_task", "worker CPU us/task", _us),
        ),
        "processed_rate",
        True,
    ),
    "results": WorkloadSpec(
        "2. Throughput with results: {n:,} tasks, the producer collects every result (warm workers)",
        (("enqueue_rate", "enqueue/s", _rate),),
        "rate",
        True,
    ),
    "latency": WorkloadSpec(
        "3. Round-trip latency: one task at a time, {n:,} times, idle warm workers (ms)",
        (("p90_ms", "p90 ms", _ms), ("p99_ms", "p99 ms", _ms)),
        "p50_ms",
        False,
    ),
    "batch": WorkloadSpec(
        "4. Batch enqueue: {n:,} no-op tasks through each system's nearest batch API, then drained",
        (("processed_rate", "processed/s", _rate),),
        "batch_rate",
        True,
        note_field="batch_note",
    ),
    "mixed": WorkloadSpec(
        "5. Mixed: {n:,} tasks, 1% sleep 1 s, the rest no-ops; time from first to last completion",
        (("floor_s", "floor s", _seconds), ("startup_s", "start-up s", _seconds)),
        "drain_s",
        False,
    ),
    "io-threads": WorkloadSpec(
        "6. io-threads: {n:,} tasks that block 20 ms, queued, then {workers} worker processes x {slots} threads",
        (
            ("steady_rate", "10-90% /s", _rate),
            ("ceiling_rate", "ceiling /s", _rate),
            ("startup_s", "start-up s", _seconds),
            ("peak_rss_mb", "peak RSS MB", _mb),
        ),
        "processed_rate",
        True,
    ),
    "web": WorkloadSpec(
        "8. web: 200 HTTP clients, {n:,} requests to one uvicorn's FastAPI endpoint that sends a 50 ms task and "
        "awaits its result; then 20 clients",
        (
            ("p50_ms", "p50 ms", _ms),
            ("p99_ms", "p99 ms", _ms),
            ("few_p50_ms", "20 clients p50 ms", _ms),
            ("few_p99_ms", "20 clients p99 ms", _ms),
        ),
        "req_s",
        True,
    ),
    "adelay": WorkloadSpec(
        "9. adelay: {n:,} sequential calls of await task.adelay() and of task.delay() (no worker), µs per call",
        (("delay_us", "delay µs", _ms), ("ratio", "adelay ÷ delay", _ms)),
        "adelay_us",
        False,
    ),
    "io-async": WorkloadSpec(
        "7. io-async: {n:,} tasks that await 1 s, queued, then one worker with {slots} slots",
        (
            ("floor_s", "floor s", _seconds),
            ("startup_s", "start-up s", _seconds),
            ("peak_rss_mb", "peak RSS MB", _mb),
        ),
        "drain_s",
        False,
    ),
}

for _number, _shape, _what in (
    (8, "chord", "a chord of {n:,} echo members and a summing body: send -> the body's result (warm workers)"),
    (9, "group", "a group of {n:,} echo tasks: send -> every result in order (warm workers)"),
):
    SPECS[_shape] = WorkloadSpec(f"{_number}. {_shape}: {_what}", (), "total_s", False)
SPECS["chain"] = WorkloadSpec(
    "10. chain: a chain of {n} steps, send -> the last result, 50 times one after another (ms)",
    (("mean_ms", "mean ms", _ms),),
    "p50_ms",
    False,
)

MAIN_HEADERS = {
    "total_s": "to result s",
    "processed_rate": "processed/s",
    "rate": "tasks/s with results",
    "p50_ms": "p50 ms",
    "batch_rate": "batch enqueue/s",
    "drain_s": "drain s",
    "req_s": "requests/s",
    "adelay_us": "adelay µs",
}


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Fold one system's runs of one workload into status, detail and median figures."""
    ok = [r for r in records if r.get("status") == "ok"]
    failed = [r for r in records if r.get("status") != "ok"]
    names = sorted({k for r in ok for k in r.get("figures", {})})
    median = {k: statistics.median(r["figures"][k] for r in ok if k in r["figures"]) for k in names}
    summary: dict[str, Any] = {"status": "ok", "detail": "", "median": median, "runs_ok": len(ok), "runs": records}
    if failed:
        first = failed[0]
        summary["status"] = first.get("status", "error")
        summary["detail"] = f"{first.get('detail', '')} ({len(failed)} of {len(records)} runs)"
    for field in ("version", "config", "batch_note", "notice"):
        summary[field] = next((r.get(field) for r in records if r.get(field)), "")
    return summary


def ratios(workload: str, systems: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """{peer: {reference: ratio}} on the workload's main figure; > 1 means conveyor is better."""
    spec = SPECS[workload]
    out: dict[str, dict[str, float]] = {}
    for name, summary in systems.items():
        if name in REFERENCES or summary["status"] != "ok":
            continue
        peer = summary["median"].get(spec.main)
        row = {}
        for ref in REFERENCES:
            ref_summary = systems.get(ref)
            if ref_summary is None or ref_summary["status"] != "ok" or not peer:
                continue
            ours = ref_summary["median"].get(spec.main)
            if ours:
                row[ref] = ours / peer if spec.higher_is_better else peer / ours
        out[name] = row
    return out


def notices(systems: dict[str, dict[str, Any]]) -> list[str]:
    """What a reader must know about rows that did run (e.g. a fallback pool), one line per system."""
    return [f"{name}: {summary['notice']}" for name, summary in systems.items() if summary.get("notice")]


def failure_cell(summary: dict[str, Any]) -> str:
    """``DROPPED k`` / ``TIMEOUT`` / ``ERROR`` / ``unavailable`` for a system whose runs failed."""
    status = summary["status"]
    if status == "dropped":
        return str(summary["detail"]).split(":", 1)[0]
    if status == "unavailable":
        return "unavailable"
    if status == "timeout":
        return "TIMEOUT"
    return str(summary["detail"]).split(":", 1)[0] if str(summary["detail"]).startswith("DUPLICATES") else "ERROR"


def table(
    workload: str, n: int, systems: dict[str, dict[str, Any]], runs: int, shape: tuple[int, int] = (1, 1)
) -> tuple[Table, list[str]]:
    """The rich table of one workload and its footnotes (notices, and one per failed system)."""
    spec = SPECS[workload]
    present = [ref for ref in REFERENCES if ref in systems]
    sense = "conveyor ÷ peer" if spec.higher_is_better else "peer ÷ conveyor"
    caption = (
        f"median of {runs} run(s); ratio columns on {MAIN_HEADERS[spec.main]}: {sense}, so > 1 means conveyor is better"
    )
    title = spec.title.format(n=n, workers=shape[0], slots=shape[1])
    t = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    t.add_column("system")
    t.add_column("batch API" if spec.note_field == "batch_note" else "configuration", overflow="fold", max_width=60)
    t.add_column(MAIN_HEADERS[spec.main], justify="right", style="bold")
    for _, header, _ in spec.columns:
        t.add_column(header, justify="right")
    for ref in present:
        t.add_column(f"{ref}\nvs peer", justify="right")
    table_ratios = ratios(workload, systems)
    notes = notices(systems)
    for name, summary in systems.items():
        label = f"{name} {summary['version']}".strip()
        note = str(summary.get(spec.note_field) or summary.get("config") or "")
        if summary["status"] == "ok":
            main = _fmt(spec, spec.main, summary["median"])
            others = [fmt(summary["median"][key]) if key in summary["median"] else "—" for key, _, fmt in spec.columns]
        else:
            main = failure_cell(summary)
            others = ["—"] * len(spec.columns)
            notes.append(f"{name}: {summary['detail']}")
        cells = [f"{table_ratios[name][ref]:.2f}" if ref in table_ratios.get(name, {}) else "—" for ref in present]
        t.add_row(escape(label), escape(note), main, *others, *cells)
    return t, notes


def _fmt(spec: WorkloadSpec, key: str, figures: dict[str, float]) -> str:
    if key not in figures:
        return "—"
    value = figures[key]
    return _ms(value) if key.endswith("_ms") else _seconds(value) if key.endswith("_s") else _rate(value)


def print_tables(console: Console, report: dict[str, Any]) -> None:
    """One table per workload, in the order they ran."""
    runs = report["meta"]["runs"]
    for workload, section in report["workloads"].items():
        shape = tuple(report["meta"].get("io_shapes", {}).get(workload, (1, 1)))
        t, notes = table(workload, section["n"], section["systems"], runs, (shape[0], shape[1]))
        console.print()
        console.print(t)
        for note in notes:
            console.print(f"  [yellow]{escape(note)}[/yellow]", highlight=False)
    lines = report.get("targets", [])
    if lines:
        console.print("\n[bold]Targets (issue 12), from the medians above[/bold]")
    for line in lines:
        colour = {"met": "green", "missed": "red"}.get(line["verdict"], "yellow")
        console.print(
            f"  [{colour}]{line['verdict']:>8}[/{colour}]  {escape(line['target'])}: {escape(line['measured'])}",
            highlight=False,
        )


def build(
    meta: dict[str, Any], sizes: dict[str, int], records: dict[str, dict[str, list[dict[str, Any]]]]
) -> dict[str, Any]:
    """The report: meta, and per workload its size, main figure, per-system summaries and ratios."""
    workloads: dict[str, Any] = {}
    for workload, by_system in records.items():
        systems = {name: summarize(recs) for name, recs in by_system.items()}
        spec = SPECS[workload]
        workloads[workload] = {
            "n": sizes[workload],
            "main": spec.main,
            "higher_is_better": spec.higher_is_better,
            "systems": systems,
            "ratios": ratios(workload, systems),
        }
    result: dict[str, Any] = {"meta": meta, "workloads": workloads}
    result["targets"] = targets(workloads)
    return result


def _median(workloads: dict[str, Any], workload: str, system: str, figure: str) -> float | None:
    """A system's median figure on a workload, or None when it did not run or did not finish."""
    summary = workloads.get(workload, {}).get("systems", {}).get(system)
    if summary is None or summary["status"] != "ok":
        return None
    value = summary["median"].get(figure)
    return float(value) if value is not None else None


def _ratio_target(
    workloads: dict[str, Any], workload: str, figure: str, ours: str, peer: str, floor: float, target: str
) -> dict[str, str]:
    """A "ours / peer >= floor" target line (for rates)."""
    a, b = _median(workloads, workload, ours, figure), _median(workloads, workload, peer, figure)
    if a is None or b is None or not b:
        return {"target": target, "measured": f"{ours} or {peer} did not run", "verdict": "n/a"}
    verdict = "met" if a / b >= floor else "missed"
    return {"target": target, "measured": f"{a:,.0f} vs {b:,.0f}/s = {a / b:.2f}x", "verdict": verdict}


def targets(workloads: dict[str, Any]) -> list[dict[str, str]]:
    """Issue 12's targets, checked on the medians of this run; workloads not run give no line."""
    lines = []
    if "io-threads" in workloads:
        lines.append(
            _ratio_target(
                workloads,
                "io-threads",
                "processed_rate",
                "conveyor-redis",
                "dramatiq",
                1.5,
                "io-threads >= 1.5x Dramatiq",
            )
        )
    if "io-async" in workloads:
        lines += _async_targets(workloads)
    if "throughput" in workloads:
        lines.append(
            _cost_target(
                workloads,
                ("conveyor-redis", "WARNING"),
                ("conveyor-redis-info", "INFO"),
                "INFO log line per task",
                0.10,
            )
        )
        lines.append(
            _cost_target(
                workloads, ("conveyor-redis-noevents", "events off"), ("conveyor-redis", "events on"), "events on", 0.05
            )
        )
        lines.append(_info_cpu(workloads))
        for peer, floor in (("huey", 2.0), ("celery", 10.0)):
            target = f"no-op processed/s >= {floor:g}x {peer}"
            lines.append(
                _ratio_target(workloads, "throughput", "processed_rate", "conveyor-redis", peer, floor, target)
            )
    return lines


def _info_cpu(workloads: dict[str, Any]) -> dict[str, str]:
    """The INFO line's price in worker CPU per task: steadier than processed/s on a busy machine."""
    quiet, info = (
        _median(workloads, "throughput", s, "cpu_us_per_task") for s in ("conveyor-redis", "conveyor-redis-info")
    )
    line = {"target": "INFO log line per task, worker CPU (not a target; steadier under load)", "verdict": "n/a"}
    if quiet and info is not None:
        line["measured"] = (
            f"WARNING {quiet:,.1f} us/task, INFO {info:,.1f} us/task: +{info - quiet:,.1f} us ({info / quiet - 1:.1%})"
        )
    else:
        line["measured"] = "no CPU figures (conveyor-redis or conveyor-redis-info did not run)"
    return line


def _cost_target(
    workloads: dict[str, Any], without: tuple[str, str], with_: tuple[str, str], what: str, limit: float
) -> dict[str, str]:
    """What a feature costs on no-op throughput: the row ``with_`` (system, label) against the row ``without``."""
    base, costly = (_median(workloads, "throughput", system, "processed_rate") for system, _ in (without, with_))
    line = {"target": f"{what} costs <= {limit:.0%} of processed/s", "verdict": "n/a"}
    if base and costly is not None:
        cost = 1 - costly / base
        line.update(
            measured=f"{without[1]} {base:,.0f}/s, {with_[1]} {costly:,.0f}/s: {cost:.1%}",
            verdict="met" if cost <= limit else "missed",
        )
    else:
        line["measured"] = f"{without[0]} or {with_[0]} did not run"
    return line


def _async_targets(workloads: dict[str, Any]) -> list[dict[str, str]]:
    ours = _median(workloads, "io-async", "conveyor-redis", "drain_s")
    arq = _median(workloads, "io-async", "arq", "drain_s")
    rss = _median(workloads, "io-async", "conveyor-redis", "peak_rss_mb")
    summary = workloads["io-async"]["systems"].get("conveyor-redis", {})
    caveat = " (thread-pool FALLBACK, not --pool asyncio)" if summary.get("notice") else ""
    drain = {"target": "io-async drain <= arq's", "verdict": "n/a", "measured": "conveyor-redis or arq did not run"}
    if ours is not None and arq is not None:
        drain.update(measured=f"{ours:.2f} s vs {arq:.2f} s{caveat}", verdict="met" if ours <= arq else "missed")
    memory = {"target": "io-async peak RSS of the worker tree <= 100 MB", "verdict": "n/a", "measured": "did not run"}
    if rss is not None:
        memory.update(measured=f"{rss:,.0f} MB{caveat}", verdict="met" if rss <= 100 else "missed")
    return [drain, memory]


def write_json(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
