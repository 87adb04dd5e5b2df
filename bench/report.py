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
        (("enqueue_rate", "enqueue/s", _rate), ("startup_s", "start-up s", _seconds)),
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
}

MAIN_HEADERS = {
    "processed_rate": "processed/s",
    "rate": "tasks/s with results",
    "p50_ms": "p50 ms",
    "batch_rate": "batch enqueue/s",
    "drain_s": "drain s",
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
    for field in ("version", "config", "batch_note"):
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


def table(workload: str, n: int, systems: dict[str, dict[str, Any]], runs: int) -> tuple[Table, list[str]]:
    """The rich table of one workload and its footnotes (one per failed system)."""
    spec = SPECS[workload]
    present = [ref for ref in REFERENCES if ref in systems]
    sense = "conveyor ÷ peer" if spec.higher_is_better else "peer ÷ conveyor"
    caption = (
        f"median of {runs} run(s); ratio columns on {MAIN_HEADERS[spec.main]}: {sense}, so > 1 means conveyor is better"
    )
    t = Table(title=spec.title.format(n=n), title_justify="left", caption=caption, caption_justify="left")
    t.add_column("system")
    t.add_column("batch API" if spec.note_field == "batch_note" else "configuration", overflow="fold", max_width=60)
    t.add_column(MAIN_HEADERS[spec.main], justify="right", style="bold")
    for _, header, _ in spec.columns:
        t.add_column(header, justify="right")
    for ref in present:
        t.add_column(f"{ref}\nvs peer", justify="right")
    table_ratios = ratios(workload, systems)
    notes = []
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
        t, notes = table(workload, section["n"], section["systems"], runs)
        console.print()
        console.print(t)
        for note in notes:
            console.print(f"  [yellow]{escape(note)}[/yellow]", highlight=False)


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
    return {"meta": meta, "workloads": workloads}


def write_json(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
