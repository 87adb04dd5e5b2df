"""The asyncio side of a Redis connection: the async producer's enqueue and result reads, on the event loop.

:class:`AsyncRedis` speaks RESP on asyncio connections of its own (:class:`_Wire`: an
``asyncio.Protocol`` whose replies hiredis parses): a command is one ``transport.write`` and one
future resolved by ``data_received``. redis-py's asyncio client would add a task per command
(``wait_for`` around the write), timeout contexts and response callbacks, which cost more than the
round trip on a loaded machine; ``await task.adelay()`` must cost no more than ``task.delay()``
(issue 15). The URL is read by redis-py's own ``parse_url``: ``redis://``, ``rediss://`` (TLS with the
system's trust store) and ``unix://``, with username, password and database.

A loop keeps a few idle connections per kind (short commands, blocking pops) and opens more while
more coroutines send at once; a connection never carries two commands at once. A connection whose
command failed, timed out or was cancelled is closed, never reused: a cancelled wait leaves no
half-read reply and no borrowed connection behind.

Connection errors and timeouts are retried with backoff for ``retry_for`` seconds, then raise
:class:`~conveyor.errors.BrokerUnavailable`, as on the sync side.
"""

from __future__ import annotations

import asyncio
import ssl
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import hiredis
import redis
from redis.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.exceptions import NoScriptError

from conveyor.brokers.redis.retry import next_pause, unavailable

T = TypeVar("T")
Arg = str | bytes | int | float

#: Idle connections a loop keeps per kind; more are opened while more coroutines send at once.
MAX_IDLE = 64
#: Seconds between two checks of the commands in flight for their timeout.
WATCH_EVERY = 0.25


class _Wire(asyncio.Protocol):
    """One connection: write a packed command, await its one reply (hiredis parses)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = hiredis.Reader()
        self.waiter: asyncio.Future[Any] | None = None
        self.expected = 1  # replies the waiter needs
        self.replies: list[Any] = []
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed(data)
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        while (reply := self.parser.gets()) is not False:
            self.replies.append(reply)
            if len(self.replies) == self.expected:
                waiter.set_result(self.replies)
                return

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(redis.ConnectionError(f"connection lost: {exc or 'closed by the server'}"))

    async def request(self, packed: bytes, timeout: float, replies: int = 1) -> Any:
        """Send one command (or ``replies`` commands packed together) and return its reply (or their replies).

        An error reply raises ResponseError (NoScriptError). The timeout is kept by the loop's
        :class:`_Watchdog` (one timer per loop, not one per command).
        """
        if self.lost or self.transport is None:
            raise redis.ConnectionError("connection closed")
        loop = asyncio.get_running_loop()
        waiter = self.waiter = loop.create_future()
        self.expected, self.replies = replies, []
        self.transport.write(packed)
        watchdog = _Watchdog.of(loop)
        watchdog.watch(waiter, loop.time() + timeout, timeout)
        try:
            answers: list[Any] = await waiter
        finally:
            watchdog.forget(waiter)
            self.waiter = None
        for reply in answers:
            if isinstance(reply, hiredis.ReplyError):
                message = str(reply)
                raise (NoScriptError if message.startswith("NOSCRIPT") else redis.ResponseError)(message)
        return answers[0] if replies == 1 else answers

    def close(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.close()


class _Watchdog:
    """The timeouts of one loop's commands in flight: one timer every WATCH_EVERY s while any is in flight.

    A timer per command (``call_later``) costs a heap push and a handle per ``adelay``; a command's
    timeout needs no better precision than this (it guards against a server that stopped answering).
    """

    _of: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Watchdog] = weakref.WeakKeyDictionary()

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.waiting: dict[asyncio.Future[Any], tuple[float, float]] = {}  # future -> (deadline, timeout)
        self.timer: asyncio.TimerHandle | None = None

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> _Watchdog:
        watchdog = cls._of.get(loop)
        if watchdog is None:
            watchdog = cls._of[loop] = cls(loop)
        return watchdog

    def watch(self, waiter: asyncio.Future[Any], deadline: float, timeout: float) -> None:
        self.waiting[waiter] = (deadline, timeout)
        if self.timer is None:
            self.timer = self.loop.call_later(WATCH_EVERY, self._check)

    def forget(self, waiter: asyncio.Future[Any]) -> None:
        self.waiting.pop(waiter, None)

    def _check(self) -> None:
        now = self.loop.time()
        for waiter, (deadline, timeout) in list(self.waiting.items()):
            if deadline <= now:
                del self.waiting[waiter]
                if not waiter.done():
                    waiter.set_exception(redis.TimeoutError(f"no reply within {timeout:g} s"))
        self.timer = self.loop.call_later(WATCH_EVERY, self._check) if self.waiting else None


class AsyncRedis:
    """Raw async commands and scripts on one Redis server, for coroutines of any event loop.

    Args:
        url: a redis-py URL (no ``prefix``).
        printable: the URL without its password, for error messages.
        retry_for: seconds a call keeps retrying connection errors before BrokerUnavailable.
        socket_timeout: seconds any one command may take.
        connect_timeout: seconds to open a connection.
        max_block: longest blocking pop in seconds.
        scripts: script name -> (SHA1, Lua source), the sync side's, so both run the same script.
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
        self.scripts = scripts
        self._address: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
        self._timeouts = {"fast": socket_timeout, "blocking": max_block + socket_timeout}
        self._connect_timeout = connect_timeout
        #: Commands sent and not answered yet, over every loop (0 once every call returned or was cancelled).
        self.in_use = 0
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, list[_Wire]]] = (
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
                    raise unavailable(self.printable, self.retry_for, exc) from exc
                await asyncio.sleep(min(delay, remaining))
                delay = next_pause(delay)

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

    async def block_then_run(
        self, key: str, seconds: float, name: str, keys: Sequence[str], args: Sequence[Arg]
    ) -> tuple[bool, Any]:
        """BLPOP ``key`` for up to ``seconds`` (at most ``max_block``), then run a script: one round trip.

        Both go out in one write on one connection; Redis runs the script the moment the pop returns.

        Returns:
            (a token was popped, the script's reply).
        """
        wait = min(seconds, self.max_block)
        sha, source = self.scripts[name]
        blpop = ("BLPOP", key, f"{wait:.3f}")

        async def attempt() -> tuple[bool, Any]:
            try:
                popped, reply = await self.send("blocking", blpop, ("EVALSHA", sha, len(keys), *keys, *args))
            except NoScriptError:  # the pop is done: load the script and run it alone
                await self.send("fast", ("SCRIPT", "LOAD", source))
                return False, await self.send("fast", ("EVALSHA", sha, len(keys), *keys, *args))
            return popped is not None, reply

        return await self.call(attempt)

    async def send(self, kind: str, *commands: Sequence[Arg]) -> Any:
        """Send commands on an idle connection of this loop and return the raw reply (one per command); no retries.

        The connection goes back to the idle list only after a whole reply (an error reply included);
        after anything else, cancellation included, it is closed.
        """
        idle = self._idle(kind)
        wire = idle.pop() if idle else await self._open()
        # (its stub declares a 1-tuple)
        packed = b"".join(hiredis.pack_command(tuple(c)) for c in commands)  # type: ignore[arg-type]
        self.in_use += 1
        try:
            reply = await wire.request(packed, self._timeouts[kind], len(commands))
        except redis.ResponseError:
            _give_back(idle, wire)
            raise
        except BaseException:
            wire.close()
            raise
        finally:
            self.in_use -= 1
        _give_back(idle, wire)
        return reply

    def _idle(self, kind: str) -> list[_Wire]:
        loop = asyncio.get_running_loop()
        own = self._loops.get(loop)
        if own is None:
            own = self._loops[loop] = {"fast": [], "blocking": []}
        return own[kind]

    async def _open(self) -> _Wire:
        """A new connection, authenticated and on the URL's database."""
        loop = asyncio.get_running_loop()
        address = self._address
        cls = address.get("connection_class")
        async with asyncio.timeout(self._connect_timeout):
            if cls is UnixDomainSocketConnection:
                _, wire = await loop.create_unix_connection(_Wire, address["path"])
            else:
                context = ssl.create_default_context() if cls is SSLConnection else None
                host, port = address.get("host", "localhost"), address.get("port", 6379)
                _, wire = await loop.create_connection(_Wire, host, port, ssl=context)
        try:
            if address.get("password"):
                user = [str(address["username"])] if address.get("username") else []
                auth = hiredis.pack_command(("AUTH", *user, str(address["password"])))  # type: ignore[arg-type]
                await wire.request(auth, self._timeouts["fast"])
            if address.get("db"):
                select = hiredis.pack_command(("SELECT", str(address["db"])))  # type: ignore[arg-type]
                await wire.request(select, self._timeouts["fast"])
        except BaseException:
            wire.close()
            raise
        return wire

    def open_connections(self) -> int:
        """How many connections this loop holds idle."""
        own = self._loops.get(asyncio.get_running_loop())
        return 0 if own is None else sum(len(wires) for wires in own.values())

    async def aclose(self) -> None:
        """Close this loop's connections (call it before the loop closes; they reopen when used again)."""
        own = self._loops.pop(asyncio.get_running_loop(), None)
        if own is not None:
            for wires in own.values():
                for wire in wires:
                    wire.close()
            await asyncio.sleep(0)  # let the transports finish closing on this loop


def _give_back(idle: list[_Wire], wire: _Wire) -> None:
    if len(idle) < MAX_IDLE and not wire.lost:
        idle.append(wire)
    else:
        wire.close()
