"""Per-child limits: when a worker child retires between tasks (``max_tasks_per_child``, ``max_memory_per_child``).

A child that leaks (a C extension, a cache that only grows) is replaced before it hurts: it stops
taking work, finishes what runs and exits; the supervisor starts a fresh one. Every pool asks here
after a task ends, so the rule and its wording live in one place.
"""

from __future__ import annotations

from conveyor.settings import Settings


def limited(settings: Settings) -> bool:
    """Whether any per-child limit is set (when none is, nothing is measured after each task)."""
    return settings.max_tasks_per_child is not None or settings.max_memory_per_child is not None


def retire_reason(settings: Settings, tasks_run: int) -> str | None:
    """Why this child must retire now that it ran ``tasks_run`` tasks, or None while it may go on."""
    if settings.max_tasks_per_child is not None and tasks_run >= settings.max_tasks_per_child:
        return f"ran {tasks_run} tasks (max_tasks_per_child)"
    return memory_reason(settings)


def memory_reason(settings: Settings) -> str | None:
    """Why this child must retire for its size (``max_memory_per_child``, resident MiB), or None."""
    limit = settings.max_memory_per_child
    if limit is None:
        return None
    import psutil  # only a child with a memory limit measures itself

    rss_mib = psutil.Process().memory_info().rss / 1_048_576
    return f"uses {rss_mib:.0f} MiB (max_memory_per_child {limit} MiB)" if rss_mib > limit else None
