"""The asyncio side of a Redis connection: the async producer's enqueue and result reads, on the event loop.

:class:`AsyncRedis` opens its connections with ``redis.asyncio`` (redis-py: TLS, AUTH, ``HELLO``,
``SELECT``, client name, as the URL says) and then talks on them through :class:`_Lane`, an asyncio
protocol that takes the connection's transport over: commands packed by hiredis, replies parsed by
hiredis in ``data_received`` and handed to the callers' futures in the order sent (issue 15: through
redis.asyncio's pool and ``execute_command`` an ``adelay`` cost about twice a sync ``delay``).

Each event loop has its own connections (a transport belongs to its loop; a FastAPI process has one
loop, tests run several ``asyncio.run`` in a row):

- one **lane** for short commands, shared by every coroutine: ``adelay``'s ``EVALSHA enqueue.lua``
  and ``aget``'s ``GET``. Concurrent commands are pipelined on it (those of one loop turn go out in
  one write while others are in flight), so a hundred concurrent ``adelay`` share round trips and
  syscalls instead of checking out a hundred pooled connections.
- **blocking lanes**, one per waiting ``aget`` at a time: the ``BLPOP`` on a result's wake-up list
  and the script behind it go out in one write; the lane goes back to the loop's idle list when its
  replies are in (:data:`IDLE_LANES` are kept), so a wait that lasts seconds never holds up a command.

Scripts are registered on the loop's redis.asyncio client (``EVALSHA``; after ``NOSCRIPT`` the
script is loaded and run through that client). Timeouts are this module's: one watchdog thread per
process (:class:`_Watchdog`: no timer in any loop's schedule, which would cost every turn of the loop)
fails a lane when its oldest command got no reply within ``socket_timeout`` (a blocking pop: its
block time plus ``socket_timeout``), through the lane's own loop; a failed lane fails every
command waiting on it and the next command opens a new one. A cancelled command on the shared lane
leaves its reply to be read and dropped (the lane stays in step); a cancelled blocking pop closes
its lane.

On Sentinel (``redis+sentinel://``) the lanes are the same: their connections come from the master
client's ``SentinelConnectionPool``, whose connections ask the sentinels for the master's address as
they open, so a lane that failed over (its server gone, or a ``READONLY`` reply from a master turned
replica) reopens on the new master. ``wait=N`` (:meth:`AsyncRedis.run_confirmed`) sends the script
and ``WAIT`` in one write on a lent lane. On Redis Cluster (``redis+cluster://``) there are no lanes:
redis.asyncio's ``RedisCluster`` routes each command to its slot's node, within one ``asyncio.timeout``.

Connection errors and timeouts are retried with backoff for ``retry_for`` seconds, then raise
:class:`~conveyor.errors.BrokerUnavailable`, as on the sync side; redis-py's own retry is off. A
cancelled caller's call ends with ``CancelledError`` even when a library layer swallowed the cancel.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import hashlib
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from time import monotonic
from typing import Any, TypeVar, cast

import hiredis
import redis
import redis.asyncio
from redis.asyncio.connection import Connection, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import SentinelManagedConnection
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import InvalidResponse, NoScriptError, ResponseError

from conveyor.brokers.redis.retry import next_pause, unavailable, unconfirmed
from conveyor.brokers.redis.topology import async_client, parse

T = TypeVar("T")
Arg = str | bytes | int | float

#: Blocking lanes a loop keeps open between waits (more are opened while more coroutines wait at once).
IDLE_LANES = 256


class _Watchdog:
    """One thread per process that times every lane's commands, so that no event loop holds a timer for them.

    A timer in a loop's schedule costs every turn of that loop (it works out its select timeout and
    scans its timers): about a twentieth of an ``adelay``, whose two turns had the lane's timer to
    carry (issue 15). This thread sleeps until the oldest command of any lane is due (and looks again
    at least every half ``socket_timeout``, so a lane that had nothing waiting is timed from its first
    command); an overdue lane is handed to its own loop (``call_soon_threadsafe``), which fails it
    unless the reply came meanwhile. It only reads the lanes; their loops change them.
    """

    def __init__(self) -> None:
        self._lanes: weakref.WeakSet[_Lane] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pid = 0  #: the process whose thread runs (a forked child starts its own)

    def watch(self, lane: _Lane) -> None:
        """Time ``lane``'s commands until it fails (or is collected); starts the thread on first use."""
        with self._lock:
            if self._pid != os.getpid():
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="conveyor-redis-watchdog", daemon=True).start()
            self._lanes.add(lane)
        self._wake.set()

    def forget(self, lane: _Lane) -> None:
        """Stop timing ``lane`` (it failed or closed)."""
        with self._lock:
            self._lanes.discard(lane)

    def look_sooner(self) -> None:
        """Look at the lanes now: a command was sent with a timeout shorter than its lane's own."""
        self._wake.set()

    def after_fork(self) -> None:
        """In a forked child: no thread runs here and the lock may have been copied held; start afresh."""
        self._lanes, self._lock, self._wake, self._pid = weakref.WeakSet(), threading.Lock(), threading.Event(), 0

    def _run(self) -> None:
        while True:
            wake = self._look()
            self._wake.wait(None if wake is None else max(0.0, wake - monotonic()))
            self._wake.clear()

    def _look(self) -> float | None:
        """Hand each overdue lane to its loop; when to look next (None: no lane to time, until one comes)."""
        with self._lock:
            lanes = list(self._lanes)  # (strong references only while looking: a lane of a loop gone is collected)
        if not lanes:
            return None
        now = monotonic()
        wake = now + min(lane.timeout for lane in lanes) / 2
        for lane in lanes:
            due = lane.due()
            if due is None or lane.poked:
                continue
            if due <= now:
                lane.poked = True
                try:
                    lane.loop.call_soon_threadsafe(lane.check)
                except RuntimeError:  # its loop closed without aclose(): nothing waits on it any more
                    self.forget(lane)
            else:
                wake = min(wake, due)
        return wake


_WATCHDOG = _Watchdog()
os.register_at_fork(after_in_child=_WATCHDOG.after_fork)


@dataclass
class _LoopClients:
    """One event loop's connections: its lane, its blocking lanes, and a client for the scripts and connections.

    ``lane`` is the loop's pipelined connection for ``GET`` and ``EVALSHA`` (:class:`_Lane`), opened by
    ``opening`` on first use and again after it failed. A blocking pop (or a confirmed enqueue) takes a
    lane of its own from ``idle`` (or opens one) and gives it back when its replies are in (``lent``
    counts those out). ``client`` opens the lanes' connections (its pool's settings: on Sentinel, the
    master's pool) and loads a script the server lost; on Cluster it runs every command (no lanes).
    ``sentinels`` are the sentinels' clients (Sentinel only), closed with it.
    """

    loop: weakref.ref[asyncio.AbstractEventLoop]
    client: redis.asyncio.Redis
    scripts: dict[str, AsyncScript]
    sentinels: list[redis.asyncio.Redis] = field(default_factory=list)
    lane: _Lane | None = None
    opening: asyncio.Task[_Lane] | None = field(default=None, repr=False)
    idle: list[_Lane] = field(default_factory=list)
    lent: int = 0


class _Lane(asyncio.Protocol):
    """One connection of an event loop on which every coroutine's ``GET`` and ``EVALSHA`` are pipelined.

    redis.asyncio opens it (TLS, AUTH, ``HELLO``, ``SELECT``: :meth:`AsyncRedis._open_lane`); then this
    protocol takes its transport over. A command is written at once (while others are in flight: with
    the loop turn's other commands, in one write at the end of the turn) and its reply resolves the
    caller's future from ``data_received``, replies in the order sent: two event-loop turns per
    command, no pool checkout, lock or reader task, and concurrent callers share the connection's
    round trips. A caller that was cancelled leaves its future behind; its reply is read and dropped
    when it comes, so the connection stays usable. One timer (``watchdog``) fails the lane when its
    oldest command got no reply for ``timeout`` seconds; a failed lane answers every waiting future
    with a ``ConnectionError`` (retried by :meth:`AsyncRedis.call`) and the next command opens a new one.
    """

    def __init__(self, conn: Connection, transport: asyncio.Transport, timeout: float) -> None:
        self.conn = conn  #: redis.asyncio's connection: its writer holds the transport (closed by ``disconnect``)
        self.failure: redis.ConnectionError | redis.TimeoutError | None = None
        self._transport = transport
        self.timeout = timeout  #: seconds a command may wait for its reply (a blocking pop: more, see ``commands``)
        self.loop = self._loop = asyncio.get_running_loop()
        #: The loop's ``create_future``; on asyncio's own loops the Future type itself (no Python frame per command).
        self._future: Callable[[], asyncio.Future[Any]] = self._loop.create_future
        if type(self._loop).create_future is asyncio.BaseEventLoop.create_future:
            self._future = functools.partial(asyncio.Future, loop=self._loop)
        #: A Sentinel-found master's connection: a ``READONLY`` reply there means a failover (see ``data_received``).
        self._sentinel = isinstance(conn, SentinelManagedConnection)
        self._reader = hiredis.Reader(protocolError=InvalidResponse, replyError=ResponseError)
        self._push = getattr(hiredis, "PushNotification", None)  # RESP3 pushes (none asked for) are skipped
        self._waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        #: Set once the watchdog thread asked this lane's loop to look at an overdue command (one call at a time).
        self.poked = False
        #: Commands held for one write at the end of this loop turn (while others are in flight).
        self._batch: list[bytes] = []

    def command(self, packed: bytes) -> asyncio.Future[Any]:
        """Write one packed command; the future of its reply (an error reply is a ``ResponseError`` value).

        Raises:
            redis.ConnectionError: the lane failed (the caller retries on a new one).
        """
        if self.failure is not None:
            raise redis.ConnectionError(f"the connection failed: {self.failure}") from self.failure
        future = self._future()
        if self._batch:
            self._batch.append(packed)
        elif self._waiting:  # others in flight: this turn's commands go out in one write (one syscall)
            self._batch.append(packed)
            self._loop.call_soon(self._flush)
        else:
            self._transport.write(packed)
        self._waiting.append((future, monotonic() + self.timeout))
        return future

    def commands(self, packed: bytes, replies: int, timeout: float) -> list[asyncio.Future[Any]]:
        """Write ``replies`` packed commands in one write (a blocking pop and what follows it), each answered
        within ``timeout`` seconds; the futures of their replies.

        Raises:
            redis.ConnectionError: the lane failed.
        """
        if self.failure is not None:
            raise redis.ConnectionError(f"the connection failed: {self.failure}") from self.failure
        if self._batch:
            self._flush()
        self._transport.write(packed)
        due = monotonic() + timeout
        futures = [self._loop.create_future() for _ in range(replies)]
        self._waiting.extend((future, due) for future in futures)
        if timeout < self.timeout:
            _WATCHDOG.look_sooner()  # (the watchdog may be asleep until later than this due)
        return futures

    @property
    def awaited(self) -> int:
        """Commands whose caller still awaits the reply (a cancelled caller's future is done: not counted)."""
        return sum(1 for future, _ in self._waiting if not future.done())

    @property
    def idle(self) -> bool:
        """Open, with no reply outstanding (a blocking lane can be lent again)."""
        return self.failure is None and not self._waiting

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        if batch and self.failure is None:
            self._transport.write(b"".join(batch))

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while True:
            try:
                reply = self._reader.gets()
            except InvalidResponse as exc:
                self.fail(redis.ConnectionError(f"invalid reply from Redis: {exc}"))
                return
            if reply is False:
                return
            if self._push is not None and isinstance(reply, self._push):
                continue
            if self._sentinel and isinstance(reply, ResponseError) and str(reply).startswith("READONLY"):
                # The master became a replica (a failover): this command and the others waiting fail with a
                # ConnectionError, retried on a new lane, whose connection asks the sentinels for the new master
                # (redis.asyncio's SentinelManagedConnection does the same on its own reads).
                self.fail(redis.ConnectionError(f"the master became a replica: {reply}"))
                return
            if not self._waiting:
                self.fail(redis.ConnectionError(f"a reply nobody asked for: {reply!r:.100}"))
                return
            future, _ = self._waiting.popleft()
            if not future.done():  # else its caller was cancelled: the reply is dropped
                future.set_result(reply)

    def eof_received(self) -> bool | None:
        self.fail(redis.ConnectionError("Redis closed the connection"))
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        failure = redis.ConnectionError(f"connection to Redis lost: {exc or 'closed'}")
        failure.__cause__ = exc
        self.fail(failure)

    def due(self) -> float | None:
        """When the oldest command's reply is overdue (``time.monotonic``); None with nothing waiting.

        Read by the watchdog thread (a deque's ends are safe to read from another thread).
        """
        try:
            return None if self.failure is not None else self._waiting[0][1]
        except IndexError:
            return None

    def check(self) -> None:
        """On the lane's loop, asked by the watchdog thread: fail the lane if its oldest command is overdue."""
        self.poked = False
        if self._waiting and self.failure is None and monotonic() >= self._waiting[0][1]:
            self.fail(redis.TimeoutError("no reply in time (the server stopped answering)"))

    def fail(self, failure: redis.ConnectionError | redis.TimeoutError) -> None:
        """Close the lane: every waiting command fails with ``failure``, later ones are refused."""
        if self.failure is not None:
            return
        self.failure = failure
        _WATCHDOG.forget(self)
        self._transport.close()
        while self._waiting:
            future, _ = self._waiting.popleft()
            if not future.done():
                error = type(failure)(str(failure))
                error.__cause__ = failure.__cause__
                future.set_exception(error)


class AsyncRedis:
    """Async commands and scripts on one Redis server, for coroutines of any event loop.

    Args:
        url: a redis-py URL (no ``prefix``): ``redis://``, ``rediss://``, ``unix://``, or a
            ``redis+sentinel://`` or ``redis+cluster://`` one (``topology.py``).
        printable: the URL without its password, for error messages.
        retry_for: seconds a call keeps retrying connection errors before BrokerUnavailable.
        socket_timeout: seconds any one command may take.
        connect_timeout: seconds to open a connection.
        max_block: longest blocking pop in seconds.
        scripts: script name -> Lua source, the sync side's, so both run the same script.
    """

    def __init__(
        self,
        url: str,
        printable: str,
        *,
        retry_for: float,
        socket_timeout: float,
        connect_timeout: float,
        max_block: float,
        scripts: dict[str, str],
    ) -> None:
        self.printable = printable
        self.retry_for = retry_for
        self.socket_timeout = socket_timeout
        self.max_block = max_block
        self._url = url
        self._topology = parse(url)
        #: Redis Cluster: redis.asyncio's cluster client runs every command (no lanes, so :meth:`run_packed`
        #: would pack for nothing: its callers use :meth:`run`).
        self.clustered = self._topology.clustered
        self._connect_timeout = connect_timeout
        self._sources = scripts
        #: Calls in :meth:`call` (retrying, or on a lent lane or the cluster client): see :attr:`in_use`.
        self._calling = 0
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClients] = weakref.WeakKeyDictionary()
        #: The clients of the loop that called last: most processes have one loop, and the weak dictionary's
        #: lookup (a weak reference made per call) is a tenth of an adelay's own work.
        self._recent: _LoopClients | None = None

    @property
    def in_use(self) -> int:
        """Calls under way, over every loop: commands awaited on a loop's lane and calls in :meth:`call`.

        0 once every call returned or was cancelled (a cancelled caller's command may still wait for its
        reply on the lane: it is no longer counted).
        """
        lanes = sum(own.lane.awaited for own in list(self._loops.values()) if own.lane is not None)
        return self._calling + lanes

    def _clients(self) -> _LoopClients:
        """The running loop's clients, made on its first call."""
        loop = asyncio.get_running_loop()
        own = self._recent
        if own is not None and own.loop() is loop:
            return own
        own = self._loops.get(loop)
        if own is None:
            client, sentinels = self._client()
            scripts = {name: client.register_script(source) for name, source in self._sources.items()}
            own = self._loops[loop] = _LoopClients(weakref.ref(loop), client, scripts, sentinels)
        self._recent = own
        return own

    def _client(self) -> tuple[redis.asyncio.Redis, list[redis.asyncio.Redis]]:
        """A client with a pool of its own, on the URL's server, database and credentials: it opens the lanes'
        connections and runs a script the server lost; and the clients of the sentinels it asks (Sentinel).

        redis-py's own retry is off (``call`` retries) and so is its ``socket_timeout`` (the lanes time
        their commands: redis.asyncio would wrap each write in ``asyncio.wait_for``, a task per command).
        """
        if self._topology.kind != "single":  # Sentinel (its master's pool opens the lanes) or Cluster
            client, sentinels = async_client(
                self._topology,
                socket_timeout=None,
                socket_connect_timeout=self._connect_timeout,
                retry=Retry(NoBackoff(), 0),
            )
            return cast("redis.asyncio.Redis", client), sentinels  # the commands conveyor uses are the same on both
        options: dict[str, Any] = {
            "socket_timeout": None,
            "socket_connect_timeout": self._connect_timeout,
            "retry": Retry(NoBackoff(), 0),
            **parse_url(self._url),
        }
        return redis.asyncio.Redis.from_pool(redis.asyncio.ConnectionPool(**options)), []

    async def call(self, op: Callable[[], Awaitable[T]], timeout: float | None = None) -> T:
        """Await ``op`` within ``timeout`` seconds, retrying connection errors and timeouts.

        Retries go on with backoff for ``retry_for`` seconds. ``timeout=None``: ``op`` times itself (a
        lane command: the lane's watchdog), so no ``asyncio.timeout`` timer is set for it. A cancel of
        the calling task that arrived while ``op`` ran ends the call with ``CancelledError`` even when a
        library layer swallowed it (returned a result, or turned it into a connection error).

        Raises:
            BrokerUnavailable: Redis did not answer within ``retry_for`` seconds.
        """
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        cancels = 0 if task is None else task.cancelling()  # cancel requests made before this call
        deadline = loop.time() + self.retry_for
        delay = 0.0
        while True:
            self._calling += 1
            try:
                if timeout is None:
                    result = await op()
                else:
                    async with asyncio.timeout(timeout):
                        result = await op()
                if task is not None and task.cancelling() > cancels:
                    # Cancelled while the command ran, and a library layer swallowed it (asyncio.wait_for
                    # on Python 3.11 returns its inner result when that result and the cancel meet):
                    # the caller asked to stop, so stop, instead of waiting on with the cancel lost.
                    raise asyncio.CancelledError
                return result
            except TimeoutError as exc:  # this call's own timeout (an outer one arrives as CancelledError)
                failure: Exception = redis.TimeoutError(f"no reply within {timeout:g} s")
                failure.__cause__ = exc
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                failure = exc
            finally:
                self._calling -= 1
            if task is not None and task.cancelling() > cancels:
                # A cancellation arrived while a library layer turned it into a connection error (seen
                # with Sentinel connections opening under load): never retry a cancelled task's call.
                raise asyncio.CancelledError from failure
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise unavailable(self.printable, self.retry_for, failure) from failure
            await asyncio.sleep(min(delay, remaining))
            delay = next_pause(delay)

    async def get(self, key: str) -> bytes | None:
        """GET ``key`` on the loop's lane (Cluster: through the cluster client), with retries; the raw value."""
        own = self._clients()
        if self.clustered:
            return cast("bytes | None", await self.call(lambda: own.client.get(key), timeout=self.socket_timeout))
        reply = await self._on_lane(own, _pack("GET", key))
        if isinstance(reply, ResponseError):
            raise reply
        return cast("bytes | None", reply)

    async def run(self, name: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """One script with retries: EVALSHA of the registered script; after NOSCRIPT, the script loads and runs again.

        This is adelay's one call: an ``EVALSHA`` on the loop's lane (:class:`_Lane`); on Cluster, through
        the cluster client (routed to the node of the keys' slot).
        """
        own = self._clients()
        script = own.scripts[name]
        if self.clustered:
            return await self.call(
                lambda: _cluster_evalsha(own.client, script, keys, args), timeout=self.socket_timeout
            )
        reply = await self._on_lane(own, _pack("EVALSHA", script.sha, len(keys), *keys, *args))
        if isinstance(reply, ResponseError):
            if not str(reply).startswith("NOSCRIPT"):
                raise reply
            # The server lost its scripts (a restart, SCRIPT FLUSH): load it and run it again.
            return await self.call(lambda: script(keys=keys, args=args), timeout=self.socket_timeout)
        return reply

    def script_head(self, name: str, keys: Sequence[str], fixed: Sequence[Arg], more: int) -> bytes:
        """The start of a packed ``EVALSHA`` of script ``name`` with ``keys`` and the first arguments ``fixed``,
        followed by ``more`` arguments the caller packs (:meth:`run_packed`).

        A caller that makes the same call many times (one queue's enqueue.lua) keeps it: then only the
        arguments that change are packed per call. hiredis' and redis-py's packers format each
        argument's length with ``sprintf``: about a sixth of an ``adelay``'s instructions went there.
        """
        sha = hashlib.sha1(self._sources[name].encode()).hexdigest()  # as redis-py's Script names it
        packed = _pack("EVALSHA", sha, len(keys), *keys, *fixed)
        count = 3 + len(keys) + len(fixed)
        return b"*%d\r\n%b" % (count + more, packed.removeprefix(b"*%d\r\n" % count))

    def send_packed(self, packed: bytes) -> asyncio.Future[Any] | None:
        """Write a command the caller packed (:meth:`script_head`, then its arguments) on the running loop's lane.

        ``adelay``'s hot path, with no coroutine of its own (a frame to enter and resume per call): the
        caller awaits the future of the raw reply, an error reply as a ``ResponseError`` value. The future
        raises ``ConnectionError`` or ``TimeoutError`` if the lane failed (also when a Sentinel master
        answered ``READONLY``: a failover). Anything but a plain reply goes to :meth:`run_again`, with the
        same command's arguments. A cancelled caller's reply is read and dropped (the command may have run).

        Returns:
            None when the loop has no open lane (its first command, after a failure; always on Cluster):
            :meth:`run` the command instead.
        """
        own = self._recent
        if own is None or own.loop() is not asyncio.get_running_loop():
            own = self._clients()
        lane = own.lane
        if lane is None or lane.failure is not None:
            return None
        return lane.command(packed)

    async def run_again(self, reply: ResponseError | None, name: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """After :meth:`send_packed`: :meth:`run` the script with retries, unless its ``reply`` was an error to raise.

        ``reply`` None: it was not sent (no open lane) or its lane failed. A ``NOSCRIPT`` reply: the server
        lost its scripts; :meth:`run` loads it.

        Raises:
            ResponseError: ``reply``, an error reply of the script itself.
        """
        if reply is not None and not str(reply).startswith("NOSCRIPT"):
            raise reply
        return await self.run(name, keys, args)

    async def run_packed(self, name: str, keys: Sequence[str], packed: bytes, args: Callable[[], Sequence[Arg]]) -> Any:
        """:meth:`run` of a command the caller packed: :meth:`send_packed`, then :meth:`run_again` when needed.

        ``args()`` builds the command's arguments (the same as ``packed`` holds: the whole ARGV) for
        :meth:`run`: a loop's first call, a failed lane, a server that lost its scripts (``NOSCRIPT``) or
        turned replica (``READONLY``, Sentinel), and Redis Cluster.
        """
        sent = self.send_packed(packed)
        try:
            reply = None if sent is None else await sent
        except (redis.ConnectionError, redis.TimeoutError):  # the lane failed under it: run() opens a new one
            reply = None
        if reply is None or isinstance(reply, ResponseError):  # (a script that answers nil takes run()'s way)
            return await self.run_again(reply, name, keys, args())
        return reply

    async def _on_lane(self, own: _LoopClients, packed: bytes) -> Any:
        """One packed command on the loop's lane, retried; its reply (an error reply as a ``ResponseError``).

        The hot path is inline (an open lane: write, await the reply's future); the first command of a
        loop, and one whose lane failed, go through :meth:`call` and :meth:`_lane`.
        """
        lane = own.lane
        if lane is not None and lane.failure is None:
            try:
                return await lane.command(packed)
            except (redis.ConnectionError, redis.TimeoutError):
                pass  # the lane failed under it: again on a new one, with retries

        async def on_a_lane() -> Any:
            lane = await self._lane()
            return await lane.command(packed)

        return await self.call(on_a_lane)

    async def _lane(self) -> _Lane:
        """The running loop's lane: open, or opened now (once for every coroutine that asks meanwhile)."""
        clients = self._clients()
        lane = clients.lane
        if lane is not None and lane.failure is None:
            return lane
        if clients.opening is None:
            clients.lane = None
            opening = clients.opening = asyncio.ensure_future(self._open_lane(clients, lane))

            def opened(task: asyncio.Task[_Lane]) -> None:
                clients.opening = None
                if not task.cancelled() and task.exception() is None:
                    clients.lane = task.result()

            opening.add_done_callback(opened)
        return await asyncio.shield(clients.opening)  # a cancelled caller does not cancel the others' opening

    async def _open_lane(self, clients: _LoopClients, failed: _Lane | None) -> _Lane:
        """A connection redis.asyncio opens (TLS, AUTH, HELLO, SELECT, as its pool's), then taken over by a lane.

        On Sentinel the pool's connection asks the sentinels for the master's address first.

        Raises:
            redis.ConnectionError: no connection within ``connect_timeout`` plus ``socket_timeout``.
        """
        if failed is not None:
            await failed.conn.disconnect(nowait=True)
        conn = cast("Connection", clients.client.connection_pool.make_connection())  # type: ignore[no-untyped-call]
        try:
            async with asyncio.timeout(self._connect_timeout + self.socket_timeout):
                await conn.connect()  # type: ignore[no-untyped-call]
        except TimeoutError as exc:
            await conn.disconnect(nowait=True)
            raise redis.ConnectionError(
                f"no connection within {self._connect_timeout + self.socket_timeout:g} s"
            ) from exc
        writer = conn._writer  # redis.asyncio's StreamWriter: the one handle on the transport it opened
        if writer is None:
            raise redis.ConnectionError("redis.asyncio left the connection closed")
        transport = cast("asyncio.Transport", writer.transport)
        lane = _Lane(conn, transport, self.socket_timeout)
        transport.set_protocol(lane)
        _WATCHDOG.watch(lane)
        return lane

    async def block_then_run(
        self, pop: Sequence[str], seconds: float, name: str, keys: Sequence[str], args: Sequence[Arg]
    ) -> tuple[bool, Any]:
        """BLPOP the lists ``pop`` for up to ``seconds`` (at most ``max_block``), then run a script: one round trip.

        Both go out in one write on a blocking lane of the loop (lent to this call alone); Redis runs the
        script the moment the pop returns. A call cancelled or failed with the pop in flight closes its
        lane (it would block whoever came next); one that returns gives it back for the next wait. On
        Cluster the pop and the script are two round trips through the cluster client (its pipeline
        refuses ``EVALSHA``); ``pop`` and ``keys`` are all of one slot.

        Returns:
            (a token was popped, the script's reply).
        """
        wait = min(seconds, self.max_block)
        own = self._clients()
        script = own.scripts[name]
        if self.clustered:

            async def popped_then_run() -> tuple[bool, Any]:
                popped = await own.client.blpop(list(pop), timeout=wait)
                return popped is not None, await _cluster_evalsha(own.client, script, keys, args)

            return await self.call(popped_then_run, timeout=wait + self.socket_timeout)
        packed = _pack("BLPOP", *pop, wait) + _pack("EVALSHA", script.sha, len(keys), *keys, *args)

        async def attempt() -> tuple[bool, Any]:
            popped, reply = await self._on_lent_lane(own, packed, 2, wait + self.socket_timeout)
            if isinstance(popped, ResponseError):
                raise popped
            if isinstance(reply, ResponseError):
                if not str(reply).startswith("NOSCRIPT"):
                    raise reply
                # The pop is done: the script loads again and runs alone.
                async with asyncio.timeout(self.socket_timeout):
                    reply = await script(keys=keys, args=args)
            return popped is not None, reply

        return await self.call(attempt)

    async def run_confirmed(
        self, name: str, keys: Sequence[str], args: Sequence[Arg], replicas: int, timeout: float
    ) -> Any:
        """One script, then ``WAIT replicas timeout``: both in one write on a lent lane (one round trip).

        A lane of its own (as a blocking pop's), so the ``WAIT`` never holds up the shared lane's
        commands; ``WAIT`` counts the replicas that have this connection's script write. Not on Cluster
        (``wait=`` is refused there before connecting).

        Raises:
            BrokerUnavailable: fewer than ``replicas`` replicas confirmed the write within ``timeout``
                seconds (the script's writes did happen on the master: a failover may still lose them).
        """
        if self.clustered:
            raise AssertionError("wait= is refused on Redis Cluster")  # pragma: no cover
        own = self._clients()
        script = own.scripts[name]
        packed = _pack("EVALSHA", script.sha, len(keys), *keys, *args) + _pack(
            "WAIT", replicas, max(1, int(timeout * 1000))
        )

        async def attempt() -> Any:
            for first in (True, False):
                reply, acked = await self._on_lent_lane(own, packed, 2, self.socket_timeout + timeout)
                if isinstance(reply, ResponseError):
                    if first and str(reply).startswith("NOSCRIPT"):  # the server lost its scripts: load, again
                        async with asyncio.timeout(self.socket_timeout):
                            await own.client.script_load(script.script)
                        continue
                    raise reply
                if isinstance(acked, ResponseError):
                    raise acked
                if int(acked) < replicas:
                    raise unconfirmed(self.printable, replicas, int(acked), timeout)
                return reply
            raise AssertionError("unreachable")  # pragma: no cover

        return await self.call(attempt)

    async def _on_lent_lane(self, own: _LoopClients, packed: bytes, replies: int, timeout: float) -> list[Any]:
        """``replies`` packed commands in one write on a lane lent to this call; their replies (error replies
        as ``ResponseError`` values), all within ``timeout`` seconds.

        A call cancelled or failed with replies outstanding closes the lane; one whose replies are in
        gives it back (closed instead if the server turned replica: a failover).

        Raises:
            redis.ConnectionError: the lane failed, or its server is a replica now (Sentinel).
        """
        lane = await self._lend(own)
        try:
            futures = lane.commands(packed, replies, timeout)
            results = [await future for future in futures]
        except BaseException:
            lane.fail(redis.ConnectionError("a lent lane's call was cancelled or failed"))
            await lane.conn.disconnect(nowait=True)
            raise
        finally:
            own.lent -= 1
        await self._give_back(own, lane)
        return results

    async def _lend(self, own: _LoopClients) -> _Lane:
        """An idle blocking lane of the loop, or a new one; counted in ``lent`` until given back."""
        while own.idle:
            lane = own.idle.pop()
            if lane.idle:
                own.lent += 1
                return lane
            await lane.conn.disconnect(nowait=True)  # it failed while idle (the server closed it)
        lane = await self._open_lane(own, None)
        own.lent += 1
        return lane

    async def _give_back(self, own: _LoopClients, lane: _Lane) -> None:
        """Keep ``lane`` for the next blocking pop (up to :data:`IDLE_LANES`), or close it (also after ``aclose``)."""
        if lane.idle and len(own.idle) < IDLE_LANES and self._loops.get(asyncio.get_running_loop()) is own:
            own.idle.append(lane)
        else:
            lane.fail(redis.ConnectionError("closed: enough idle connections"))
            await lane.conn.disconnect(nowait=True)

    def lent(self) -> int:
        """Blocking lanes of the running loop lent to a wait and not given back."""
        own = self._loops.get(asyncio.get_running_loop())
        return 0 if own is None else own.lent

    async def aclose(self) -> None:
        """Close this loop's connections (call it before the loop closes; they reopen when used again)."""
        own = self._loops.pop(asyncio.get_running_loop(), None)
        if own is not None:
            if self._recent is own:
                self._recent = None
            if own.opening is not None:
                own.opening.cancel()
                await asyncio.gather(own.opening, return_exceptions=True)
            for lane in [*own.idle, *([own.lane] if own.lane is not None else [])]:
                lane.fail(redis.ConnectionError("closed by aclose()"))
                await lane.conn.disconnect(nowait=True)
            own.idle.clear()
            await own.client.aclose()
            for sentinel in own.sentinels:
                await sentinel.aclose()


async def _cluster_evalsha(
    client: redis.asyncio.Redis, script: AsyncScript, keys: Sequence[str], args: Sequence[Arg]
) -> Any:
    """EVALSHA through the cluster client (routed to the keys' slot); the script loads after NOSCRIPT."""
    try:
        return await client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)  # type: ignore[no-untyped-call]
    except NoScriptError:  # this node has not seen the script yet, or lost it
        return await script(keys=keys, args=args)


def _pack(*args: Arg) -> bytes:
    """One command in RESP, packed by hiredis (its name a single word: ``GET``, ``EVALSHA``)."""
    packed: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]  # (its hint is a 1-tuple)
    return packed
