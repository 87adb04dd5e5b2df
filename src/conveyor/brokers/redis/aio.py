"""The asyncio side of a Redis connection: the async producer's enqueue and result reads, on the event loop.

:class:`AsyncRedis` sends each command on a redis.asyncio connection of the running loop and reads its
raw reply, as :meth:`RedisConnection._send_and_read` does for threads: no pool checkout with a
readiness poll, no response callbacks, and no thread hop. A loop keeps a few idle connections per
kind (short commands, blocking pops) and opens more when more coroutines send at once; a connection
is never shared by two commands in flight. A connection whose command failed or was cancelled is
closed, never reused, so a cancelled wait leaves no half-read reply and no borrowed connection behind.

Connection errors and timeouts are retried with backoff for ``retry_for`` seconds, then raise
:class:`~conveyor.errors.BrokerUnavailable`, as on the sync side.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import hiredis
import redis
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import NoScriptError

from conveyor.errors import BrokerUnavailable

T = TypeVar("T")
Arg = str | bytes | int | float

#: Idle connections a loop keeps per kind; more are opened while more coroutines send at once.
MAX_IDLE = 64


class _LoopConnections:
    """One event loop's idle connections, per kind (``fast`` commands and ``blocking`` pops)."""

    def __init__(self) -> None:
        self.idle: dict[str, list[AbstractConnection]] = {"fast": [], "blocking": []}


class AsyncRedis:
    """Raw async commands and scripts on one Redis server, for coroutines of any event loop.

    Args:
        url: a redis-py URL (no ``prefix``).
        printable: the URL without its password, for error messages.
        retry_for: seconds a call keeps retrying connection errors before BrokerUnavailable.
        socket_timeout: seconds any one command may take.
        connect_timeout: seconds to open a connection.
        max_block: longest blocking pop in seconds.
        scripts: script name -> Lua source (the sync side's, so both run the same SHA).
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
        scripts: dict[str, tuple[str, Any]],
    ) -> None:
        self.printable = printable
        self.retry_for = retry_for
        self.max_block = max_block
        self.scripts = scripts  # name -> (sha, source as redis-py holds it)
        options: dict[str, Any] = {"socket_connect_timeout": connect_timeout}
        self._pools = {
            "fast": ConnectionPool.from_url(url, socket_timeout=socket_timeout, **options),
            "blocking": ConnectionPool.from_url(url, socket_timeout=max_block + socket_timeout, **options),
        }
        #: Commands sent and not answered yet, over every loop (0 once every call returned or was cancelled).
        self.in_use = 0
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopConnections] = (
            weakref.WeakKeyDictionary()
        )

    async def call(self, op: Callable[[], Awaitable[T]]) -> T:
        """Await ``op``, retrying connection errors and timeouts with backoff for ``retry_for`` seconds.

        Raises:
            BrokerUnavailable: Redis did not answer within ``retry_for`` seconds.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry_for
        delay = 0.0
        while True:
            try:
                return await op()
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise BrokerUnavailable(
                        f"Redis at {self.printable} did not answer within {self.retry_for:g} s: {exc}"
                    ) from exc
                await asyncio.sleep(min(delay, remaining))
                delay = min(max(delay * 2, 0.05), 1.0)

    async def command(self, *args: Arg) -> Any:
        """One plain command with retries; its raw reply."""
        return await self.call(lambda: self.send("fast", args))

    async def run(self, name: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """One script (EVALSHA; loaded again after NOSCRIPT), with retries."""
        sha, source = self.scripts[name]

        async def evalsha() -> Any:
            try:
                return await self.send("fast", ("EVALSHA", sha, len(keys), *keys, *args))
            except NoScriptError:  # the server lost its scripts: load this one, then run it
                await self.send("fast", ("SCRIPT", "LOAD", source))
                return await self.send("fast", ("EVALSHA", sha, len(keys), *keys, *args))

        return await self.call(evalsha)

    async def blpop(self, key: str, seconds: float) -> Any:
        """BLPOP ``key`` for up to ``seconds`` (at most ``max_block``), with retries; None when nothing came."""
        wait = min(seconds, self.max_block)
        return await self.call(lambda: self.send("blocking", ("BLPOP", key, f"{wait:.3f}")))

    async def send(self, kind: str, command: Sequence[Arg]) -> Any:
        """Send one command on an idle connection of this loop and read the raw reply; no retries.

        The connection goes back to the idle list only after a whole reply (an error reply included);
        after anything else, cancellation included, it is closed.
        """
        idle = self._idle(kind)
        conn = idle.pop() if idle else self._pools[kind].make_connection()  # type: ignore[no-untyped-call]
        self.in_use += 1
        try:
            packed = hiredis.pack_command(tuple(command))  # type: ignore[arg-type]  # its stub declares a 1-tuple
            await conn.send_packed_command([packed], check_health=False)
            reply = await conn.read_response()
        except redis.ResponseError:
            self._give_back(idle, conn)
            raise
        except BaseException:
            await _drop(conn)
            raise
        finally:
            self.in_use -= 1
        self._give_back(idle, conn)
        return reply

    def _idle(self, kind: str) -> list[AbstractConnection]:
        loop = asyncio.get_running_loop()
        own = self._loops.get(loop)
        if own is None:
            own = self._loops[loop] = _LoopConnections()
        return own.idle[kind]

    @staticmethod
    def _give_back(idle: list[AbstractConnection], conn: AbstractConnection) -> None:
        if len(idle) < MAX_IDLE:
            idle.append(conn)
        else:
            asyncio.get_running_loop().create_task(_drop(conn))

    def open_connections(self) -> int:
        """How many connections this loop holds idle (none is ever held by a finished or cancelled call)."""
        own = self._loops.get(asyncio.get_running_loop())
        return 0 if own is None else sum(len(conns) for conns in own.idle.values())

    async def aclose(self) -> None:
        """Close this loop's connections (call it before the loop closes; they reopen when used again)."""
        own = self._loops.pop(asyncio.get_running_loop(), None)
        if own is not None:
            for conns in own.idle.values():
                for conn in conns:
                    await _drop(conn)


async def _drop(conn: AbstractConnection) -> None:
    """Close a connection whose state is unknown (a reply may be left unread); never raises."""
    with contextlib.suppress(Exception):  # closing a broken connection: nothing left to do
        await conn.disconnect(nowait=True)
