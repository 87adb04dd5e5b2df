"""ChildBoard: what a child writes into shared memory is what its supervisor reads after fork."""

from __future__ import annotations

import multiprocessing

from conveyor.worker.shared import SLOT_WIDTH, ChildBoard


def _run_in_child(board: ChildBoard) -> None:
    board.running(0, "a" * 36)
    board.running(1, "b-short")
    board.idle(1)
    board.running(2, "c")
    board.stamp()


def test_a_forked_child_writes_running_ids_the_parent_reads() -> None:
    ctx = multiprocessing.get_context("fork")
    board = ChildBoard(ctx, 3)
    process = ctx.Process(target=_run_in_child, args=(board,))
    process.start()
    process.join(timeout=10)
    assert process.exitcode == 0
    assert board.running_ids() == ["a" * 36, "c"]
    assert board.beat_age() < 5


def test_an_id_too_long_for_its_slot_makes_the_running_set_unknown() -> None:
    board = ChildBoard(multiprocessing.get_context("fork"), 2)
    board.running(0, "ok")
    board.running(1, "x" * SLOT_WIDTH)
    assert board.running_ids() is None
    board.idle(1)
    assert board.running_ids() == ["ok"]


def test_a_shorter_id_overwrites_a_longer_one_whole() -> None:
    board = ChildBoard(multiprocessing.get_context("fork"), 1)
    board.running(0, "a-long-task-id")
    board.running(0, "short")
    assert board.running_ids() == ["short"]
