"""Workflows: task calls written down (signatures), and chains, groups and chords built from them."""

from __future__ import annotations

from conveyor.workflows.canvas import Canvas, Chain, Chord, Group, chain, chord, group
from conveyor.workflows.groupresult import GroupResult
from conveyor.workflows.signature import Signature

#: Celery's spelling, for a call of a task known by name: ``signature("shop.add", (1, 2), app=app)``.
signature = Signature

__all__ = ["Canvas", "Chain", "Chord", "Group", "GroupResult", "Signature", "chain", "chord", "group", "signature"]
