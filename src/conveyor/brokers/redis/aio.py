"""The asyncio side of a Redis connection: the async producer's enqueue and result reads, on the event loop.

:class:`AsyncRedis` runs on ``redis.asyncio`` (redis-py with hiredis), one pair of clients per event
loop: a client for short commands and scripts, and a client for blocking pops, so a ``BLPOP`` that
waits seconds never holds a connection a quick ``EVALSHA`` needs. A redis.asyncio client belongs to
the loop that opened its connections, hence one pair per loop (a FastAPI process has one; tests run
several ``asyncio.run`` in a row). Scripts are registered on the loop's client (``EVALSHA``, loaded
again after ``NOSCRIPT``); a wake-up's ``BLPOP`` and the script behind it go out in one pipeline.

Two tunings keep ``await task.adelay()`` near ``task.delay()`` (issue 15): the connections pack
commands with hiredis (redis-py's ``HiredisRespSerializer``; redis.asyncio packs in Python), and the
enqueue's ``EVALSHA`` is sent and read on a pooled connection directly, without ``execute_command``'s
retry wrapper, observability records and response callbacks.

Timeouts are this module's, not the clients': the clients get no ``socket_timeout`` (on Python 3.11
redis.asyncio wraps every write in ``asyncio.wait_for``, a task per command) and each call runs in one
``asyncio.timeout`` instead. A cancelled or timed-out command leaves its connection closed by
redis.asyncio (it disconnects on any exception during a read) and handed back to its pool, so no
half-read reply is read by the next command and no connection stays borrowed.

Connection errors and timeouts are retried with backoff for ``retry_for`` seconds, then raise
:class:`~conveyor.errors.BrokerUnavailable`, as on the sync side; redis-py's own retry is off.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import redis
import redis.asyncio
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.connection import HiredisRespSerializer
from redis.exceptions import NoScriptError
from redis.typing import EncodableT

from conveyor.brokers.redis.retry import next_pause, unavailable, unconfirmed
from conveyor.brokers.redis.topology import async_client, parse

T = TypeVar("T")
Arg = str | bytes | int | float


class _HiredisPacking:
    """Commands packed by hiredis, with redis-py's own serializer for its sync connections.

    redis.asyncio packs in Python, argument by argument: for an enqueue's ~17 arguments that was
    about a sixth of an ``adelay``'s CPU time.
    """

    _packer = HiredisRespSerializer()

    def pack_command(self, *args: EncodableT) -> list[bytes]:
        packed: list[bytes] = self._packer.pack(*args)  # type: ignore[arg-type]  # (its hint is wrong: *args: List)
        return packed


class _PackedConnection(_HiredisPacking, Connection):
    pass


class _PackedSSLConnection(_HiredisPacking, SSLConnection):
    pass


class _PackedUnixConnection(_HiredisPacking, UnixDomainSocketConnection):
    pass


#: The connection class a URL's scheme selects -> the same with hiredis packing.
_PACKED: dict[type[Any], type[Any]] = {
    Connection: _PackedConnection,
    SSLConnection: _PackedSSLConnection,
    UnixDomainSocketConnection: _PackedUnixConnection,
}


@dataclass
class _LoopClients:
    """One event loop's clients: short commands and scripts, blocking pops; the scripts registered on the first."""

    fast: redis.asyncio.Redis
    blocking: redis.asyncio.Redis
    scripts: dict[str, AsyncScript]
    #: The sentinels' clients of both (Sentinel only), closed with them.
    sentinels: list[redis.asyncio.Redis]


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
        self._connect_timeout = connect_timeout
        self._sources = scripts
        #: Commands sent and not answered yet, over every loop (0 once every call returned or was cancelled).
        self.in_use = 0
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClients] = weakref.WeakKeyDictionary()

    def _clients(self) -> _LoopClients:
        """The running loop's clients, made on its first call."""
        loop = asyncio.get_running_loop()
        own = self._loops.get(loop)
        if own is None:
            (fast, sentinels), (blocking, more) = self._client(), self._client()
            scripts = {name: fast.register_script(source) for name, source in self._sources.items()}
            own = self._loops[loop] = _LoopClients(fast, blocking, scripts, sentinels + more)
        return own

    def _client(self) -> tuple[redis.asyncio.Redis, list[redis.asyncio.Redis]]:
        """A client with a pool of its own, on the URL's server, database and credentials; and its sentinels' clients.

        redis-py's own retry is off (``call`` retries) and so is its ``socket_timeout`` (``call`` times
        each call: redis.asyncio would wrap each write in ``asyncio.wait_for``, a task per command).
        """
        if self._topology.kind != "single":  # Sentinel or Cluster: redis-py's clients, its own packing
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
        options["connection_class"] = _PACKED[options.get("connection_class", Connection)]
        return redis.asyncio.Redis.from_pool(redis.asyncio.ConnectionPool(**options)), []

    async def call(self, op: Callable[[], Awaitable[T]], timeout: float | None = None) -> T:
        """Await ``op`` within ``timeout`` (``socket_timeout``), retrying connection errors and timeouts.

        Retries go on with backoff for ``retry_for`` seconds.

        Raises:
            BrokerUnavailable: Redis did not answer within ``retry_for`` seconds.
        """
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        cancels = 0 if task is None else task.cancelling()  # cancel requests made before this call
        deadline = loop.time() + self.retry_for
        limit = self.socket_timeout if timeout is None else timeout
        delay = 0.0
        while True:
            self.in_use += 1
            try:
                async with asyncio.timeout(limit):
                    result = await op()
                if task is not None and task.cancelling() > cancels:
                    # Cancelled while the command ran, and a library layer swallowed it (asyncio.wait_for
                    # on Python 3.11 returns its inner result when that result and the cancel meet):
                    # the caller asked to stop, so stop, instead of waiting on with the cancel lost.
                    raise asyncio.CancelledError
                return result
            except TimeoutError as exc:  # this call's own timeout (an outer one arrives as CancelledError)
                failure: Exception = redis.TimeoutError(f"no reply within {limit:g} s")
                failure.__cause__ = exc
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                failure = exc
            finally:
                self.in_use -= 1
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
        """GET ``key`` with retries; the raw value."""
        return cast("bytes | None", await self.call(lambda: self._clients().fast.get(key)))  # the clients never decode

    async def run(self, name: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """One script with retries: EVALSHA of the registered script; after NOSCRIPT, the script loads and runs again.

        This is adelay's one call, so it goes straight to a pooled connection (:func:`_send_and_read`).
        """

        async def evalsha() -> Any:
            clients = self._clients()
            script = clients.scripts[name]
            try:
                return await _send_and_read(clients.fast, "EVALSHA", script.sha, len(keys), *keys, *args)
            except NoScriptError:  # the server lost its scripts (a restart, SCRIPT FLUSH)
                return await script(keys=keys, args=args)

        return await self.call(evalsha)

    async def run_confirmed(
        self, name: str, keys: Sequence[str], args: Sequence[Arg], replicas: int, timeout: float
    ) -> Any:
        """One script, then ``WAIT replicas timeout`` on the same connection (one round trip); see the sync side.

        Raises:
            BrokerUnavailable: fewer than ``replicas`` replicas confirmed the write within ``timeout`` seconds.
        """
        wait = ("WAIT", replicas, max(1, int(timeout * 1000)))

        async def attempt() -> Any:
            clients = self._clients()
            script = clients.scripts[name]
            for first in (True, False):
                reply, acked = await _send_and_read_all(
                    clients.fast, [("EVALSHA", script.sha, len(keys), *keys, *args), wait]
                )
                if isinstance(reply, NoScriptError) and first:
                    await clients.fast.script_load(script.script)
                    continue
                if isinstance(reply, Exception):
                    raise reply
                if int(acked) < replicas:
                    raise unconfirmed(self.printable, replicas, int(acked), timeout)
                return reply
            raise AssertionError("unreachable")  # pragma: no cover

        return await self.call(attempt, timeout=self.socket_timeout + timeout)

    async def block_then_run(
        self, key: str, seconds: float, name: str, keys: Sequence[str], args: Sequence[Arg]
    ) -> tuple[bool, Any]:
        """BLPOP ``key`` for up to ``seconds`` (at most ``max_block``), then run a script: one round trip.

        Both go out in one pipeline on a connection of the blocking client; Redis runs the script the
        moment the pop returns.

        Returns:
            (a token was popped, the script's reply).
        """
        wait = min(seconds, self.max_block)

        async def attempt() -> tuple[bool, Any]:
            clients = self._clients()
            script = clients.scripts[name]
            if self._topology.clustered:  # redis-py's cluster pipeline refuses EVALSHA: two round trips
                popped = await clients.blocking.blpop([key], timeout=wait)
                try:
                    reply = await _send_and_read(clients.fast, "EVALSHA", script.sha, len(keys), *keys, *args)
                except NoScriptError:  # this node has not seen the script yet
                    reply = await script(keys=keys, args=args)
                return popped is not None, reply
            pipe = clients.blocking.pipeline(transaction=False)
            pipe.blpop([key], timeout=wait)
            pipe.evalsha(script.sha, len(keys), *keys, *args)
            popped, reply = await pipe.execute(raise_on_error=False)
            if isinstance(popped, Exception):
                raise popped
            if isinstance(reply, NoScriptError):  # the pop is done: the script loads again and runs alone
                reply = await script(keys=keys, args=args)
            elif isinstance(reply, Exception):
                raise reply
            return popped is not None, reply

        return await self.call(attempt, timeout=wait + self.socket_timeout)

    async def aclose(self) -> None:
        """Close this loop's connections (call it before the loop closes; they reopen when used again)."""
        own = self._loops.pop(asyncio.get_running_loop(), None)
        if own is not None:
            await own.fast.aclose()
            await own.blocking.aclose()
            for sentinel in own.sentinels:
                await sentinel.aclose()


async def _send_and_read(client: redis.asyncio.Redis, *args: Arg) -> Any:
    """One command on a connection of ``client``'s pool, its raw reply: the hot path's ``execute_command``.

    ``execute_command`` adds a retry wrapper (off here), observability records and response
    callbacks these replies do not need: together about a sixth of an ``adelay``'s CPU time. A
    connection whose send or read failed or was cancelled is disconnected by redis.asyncio before it
    goes back to the pool, which connects it again when next lent.
    """
    if not hasattr(client, "connection_pool"):  # Redis Cluster: the client routes the command by slot
        return await client.execute_command(*args)  # type: ignore[no-untyped-call]
    pool = client.connection_pool
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        await conn.send_command(*args)
        return await conn.read_response()
    finally:
        await pool.release(conn)


async def _send_and_read_all(client: redis.asyncio.Redis, commands: Sequence[Sequence[Arg]]) -> list[Any]:
    """``commands`` pipelined on one pooled connection of ``client``, every reply read (an error reply as a value)."""
    pool = client.connection_pool
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        await conn.send_packed_command(conn.pack_commands(commands))
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(await conn.read_response())
            except redis.ResponseError as exc:  # read whole: the next reply follows
                replies.append(exc)
        return replies
    finally:
        await pool.release(conn)
