"""Pools: where one worker child's slots run tasks, one module per pool behind one small interface.

========  ====================  ==========================================================
pool      a worker is           what runs a task
========  ====================  ==========================================================
process   ``-c`` children x 1   the child's main thread; the child prefetches ``prefetch``
thread    1 child x ``-c``      one of ``-c`` threads sharing one reserver
asyncio   1 child x ``-c``      a coroutine on the child's event loop (``pools/asyncio.py``)
========  ====================  ==========================================================

**The interface.** A pool is a class with a ``name``, a :meth:`Pool.layout` that splits the
worker's concurrency into children and slots per child, a constructor taking the
:class:`~conveyor.worker.child.Child` it serves, and :meth:`Pool.serve`, which runs in the
child's main thread until ``child.serving`` turns false and then winds down. The child owns
what every pool shares (signals, dying with the supervisor, the ChildBoard, the LeaseKeeper,
the pipe, per-child limits); a pool owns its loop and must keep these promises:

1. *No prefetch starvation.* Never hold a reserved, unstarted task while every slot is busy
   with a long task: the process pool gives its prefetched batch back once a task runs
   ``PREFETCH_HOLD`` (worker/backlog.py); the thread pool reserves only its margin while every
   thread runs (topped up while threads take from it), and gives the ready tasks back when no
   thread took one for ``READY_HOLD`` (worker/pools/thread.py).
2. *Hold what it reserved.* Every reserved delivery is held by ``child.keeper`` (heartbeated)
   from reservation to ack or nack, including finished ones whose ack is pending.
3. *Mark what runs.* ``child.board.running(slot, id)`` before a task starts, ``idle(slot)`` after
   (``child.execute`` does both): a crash then counts a delivery only against what was running.
4. *Settle through one component.* Results and acks go through a ``BatchSettler`` and
   :class:`~conveyor.worker.pools.reserver.Reserver` (results in one ``set_many``, acks with
   the next ``ack_and_reserve``), retried through outages, never left to their lease.
5. *Report through the child.* ``child.ended(outcome, reported)`` for every delivery that
   ended; ``child.started(...)`` sent at once for a task with a hard ``time_limit`` (the
   supervisor kills the child at its deadline) and for a task that runs long (terminate-
   revocation); a TaskFinished follows a reported start, anything else is counted in bulk. A pool
   that enforces limits itself (asyncio) sends ``TaskRunning`` instead: the event log hears of
   the start, the supervisor watches nothing.
6. *Stop cleanly.* When ``child.serving`` turns false: return every unstarted delivery at once
   (``child.return_unstarted``), let running tasks finish (the supervisor enforces the grace
   period), settle what finished, and return. On ``child.backend_down`` give back what has not
   started and call ``child.wait_for_backend()`` before taking more work.

An asyncio pool fits as one more module: ``layout`` gives ``(1, concurrency)``, ``serve`` runs
an event loop whose reserver coroutine keeps up to ``config.slots`` coroutines going (board
slot = coroutine index), with the same Reserver (called through ``asyncio.to_thread``) and
the same child calls; ``child.outcome_of_error`` maps what escapes ``Executor.arun``.
"""

from __future__ import annotations

import abc
import importlib
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from conveyor.worker.child import Child

__all__ = ["POOLS", "Pool", "pool_class"]

#: The pools a worker can run, each the name of a module of this package.
POOLS: tuple[str, ...] = ("process", "thread", "asyncio")


class Pool(abc.ABC):
    """Runs one child's slots (see the module docstring for the promises a pool keeps).

    Args:
        child: the child process this pool serves.
    """

    #: The ``--pool`` name.
    name: ClassVar[str]

    def __init__(self, child: Child) -> None:
        self.child = child

    @classmethod
    @abc.abstractmethod
    def layout(cls, concurrency: int) -> tuple[int, int]:
        """How a worker of ``concurrency`` slots is made: (children, slots per child)."""

    @abc.abstractmethod
    def serve(self) -> None:
        """Run tasks until ``child.serving`` is false, then return unstarted work, settle, and return."""


def pool_class(name: str) -> type[Pool]:
    """The pool class named ``name`` (one of :data:`POOLS`)."""
    if name not in POOLS:
        raise ValueError(f"unknown pool {name!r} (known: {', '.join(POOLS)})")
    module = importlib.import_module(f"{__name__}.{name}")
    cls: type[Pool] = module.POOL
    return cls
