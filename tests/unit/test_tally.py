"""The counts a worker child makes of its report in bulk (tally.py), as the task series need them."""

from __future__ import annotations

from conveyor.tally import SEP, add, count, parse
from conveyor.worker.events import Ended


def test_a_report_counts_states_runtimes_and_redeliveries() -> None:
    received = [("a", "q1", 1, 0.0), ("b", "q1", 3, 0.0), ("c", "q2", 1, 0.0)]
    ended = [
        ("a", "add", Ended.SUCCESS, 0.0005, 0.0),
        ("b", "add", Ended.RETRY, 0.2, 0.0),
        ("c", "mul", Ended.SUCCESS, 0.001, 0.0),  # on a bucket's bound: in that bucket (le)
        ("d", "mul", Ended.REVOKED, 0.0, 0.0),  # not run: counted, no runtime
        ("e", "mul", Ended.RETURNED, 0.0, 0.0),  # given back: nothing
    ]
    counts = {tuple([kind, *labels]): value for kind, labels, value in parse(count(received, ended))}
    assert counts == {
        ("q", "q1"): 2,
        ("q", "q2"): 1,
        ("d", "q1"): 1,
        ("t", "add", "SUCCESS"): 1,
        ("t", "add", "RETRY"): 1,
        ("t", "mul", "SUCCESS"): 1,
        ("t", "mul", "REVOKED"): 1,
        ("b", "add", "0"): 1,
        ("b", "add", "4"): 1,
        ("b", "mul", "0"): 1,
        (
            "s",
            "add",
        ): 0.2005,
        ("s", "mul"): 0.001,
    }


def test_totals_add_up_reports() -> None:
    totals: dict[str, float] = {}
    one = count([], [("a", "add", Ended.SUCCESS, 0.5, 0.0)])
    add(totals, one)
    add(totals, one)
    assert totals[f"t{SEP}add{SEP}SUCCESS"] == 2 and totals[f"s{SEP}add"] == 1.0
