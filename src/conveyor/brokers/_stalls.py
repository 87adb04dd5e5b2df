"""Broker stalls: a lease's term does not run while the broker itself was not serving (issue 11).

Leases are judged against the broker's clock (Redis: the server's ``TIME``; SQLite: this machine's
clock). When the broker stops serving for longer than a lease (a Redis server SIGSTOPped, paused by
its VM or restarted with persistence; the SQLite write lock held by a stuck process; a clock
stepped forward) no worker can heartbeat meanwhile, and the first recovery afterwards would find
the leases of live workers expired and hand their tasks to other workers.

So the broker records when it last served the calls that keep leases (``seen``: per queue on
Redis, one per database file on SQLite, which has one write lock for the whole file). Before a
recovery or an extend looks at lease deadlines it compares: a silence longer than
:data:`STALL_GAP` is taken for a stall, and every lease still running at ``seen`` gets the silence
added to its deadline, so it has the term back that it had when the broker stopped. Then ``seen``
becomes now.

Safety: a stall shorter than STALL_GAP is not detected, and a lease survives it only if its worker's
next heartbeat was due less than ``lease - STALL_GAP`` before the stall ended. Workers heartbeat
every ``lease / 3``, so the minimum safe lease is ``3 * STALL_GAP / 2`` (2.25 s); with the default
30 s lease every stall is survived (shorter than 1.5 s: within the term; longer: given back).

Cost of a false alarm: a silence longer than STALL_GAP without any stall postpones the expiry of
every running lease by the silence. A dead worker's lease then expires later: at most one lease
after regular traffic resumes. Regular traffic is an idle worker child (on Redis its reserve runs
every RESERVE_WAIT = 1 s; on SQLite its read-only poll stamps every :data:`IDLE_STAMP` while leases
are in flight; on PostgreSQL its idle reserve, which sends no query while nothing happens, stamps every
:data:`IDLE_WAKE` while leases are in flight) or, with every child busy, the heartbeats (every
``lease / 3``) and the supervisor's ``recover()`` (every 2 s). With every child busy and ``lease / 3``
above STALL_GAP, the supervisor's 2 s cadence is a false alarm each time: a dead worker's lease then
waits until a child is idle again (nobody could have run its task sooner), and expires at most one
lease after that.
"""

from __future__ import annotations

#: Seconds of silence after which the broker counts as having stalled. Above the longest silence of a
#: broker served by an idle worker (its reserve comes back every RESERVE_WAIT = 1 s, worker/child.py),
#: below the shortest stall the chaos test injects with its 2 s lease (2.5 s).
STALL_GAP = 1.5
#: ``seen`` is written at most this often, in seconds, so a busy broker does not write it on every
#: call; the silence measured is then at most this much longer than the real one.
STAMP_EVERY = 0.25
#: Redis: longest blocking wait, in seconds, of a reserve while its queues have leases in flight or
#: scheduled messages; the reserve.lua after each wait stamps ``seen`` (worker children already
#: reserve with a 1 s timeout; this bounds callers that pass a longer one).
IDLE_WAKE = 1.0
#: SQLite: an idle worker's read-only poll stamps ``seen`` (one small write transaction) when it
#: is older than this many seconds and leases are in flight, since reads alone leave no trace.
IDLE_STAMP = 0.5
