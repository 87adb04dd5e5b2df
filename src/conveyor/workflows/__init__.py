"""Workflows: task calls written down to be sent later (chains, groups and chords will build on them)."""

from __future__ import annotations

from conveyor.workflows.signature import Signature

__all__ = ["Signature"]
