"""Connections to Redis for the Redis broker and result backend: URLs, bounded retries, Lua scripts.

Every operation runs through :meth:`RedisConnection.call`, which retries connection errors and
timeouts with exponential backoff for a bounded time and then raises
:class:`~conveyor.errors.BrokerUnavailable`: a producer never hangs on a dead server. redis-py's
own retry is switched off so that this loop alone decides how long a call may take.

Fork safety comes from redis-py: a ``ConnectionPool`` compares ``os.getpid()`` on every checkout and
opens fresh connections in a forked child, so a client built in the parent is safe to use there.
"""

from __future__ import annotations

import importlib.resources
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

import hiredis
import redis
import redis.cluster
from redis.backoff import NoBackoff
from redis.client import Pipeline
from redis.commands.core import Script
from redis.connection import AbstractConnection
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    RedisClusterException,
    TryAgainError,
)
from redis.retry import Retry

from conveyor.brokers._urls import split_prefix
from conveyor.brokers.redis.aio import AsyncRedis
from conveyor.brokers.redis.keys import DEFAULT_PREFIX
from conveyor.brokers.redis.retry import next_pause, unavailable, unconfirmed
from conveyor.brokers.redis.topology import Topology, parse, sync_client, take_params

T = TypeVar("T")

#: One script call: (script name, KEYS, ARGV).
ScriptCall = tuple[str, Sequence[str], Sequence[str | bytes | int | float]]

#: Scripts that run on one queue's slot; ``_common.lua`` is prepended to each of them.
QUEUE_SCRIPTS = (
    "enqueue",
    "reserve",
    "ack",
    "nack",
    "extend",
    "dead_letter",
    "release_owner",
    "extend_owner",
    "recover",
    "requeue_dead",
    "purge_dead",
    "purge",
    "cancel",
    "dead_list",
    "alive",
)
#: Scripts that run on the global ``{prefix}`` slot, loaded as they are.
GLOBAL_SCRIPTS = ("claim", "release_keys", "register_worker", "workers")


def split_url(url: str) -> tuple[str, str, str]:
    """Split a conveyor Redis URL into (URL for redis-py, key prefix, URL safe to print).

    Raises:
        ConfigurationError: the ``prefix`` parameter is empty.
    """
    return split_prefix(url, DEFAULT_PREFIX, "Redis")


#: Query parameters of the broker alone (enqueue confirmation, ``wait=``): the result backend ignores them.
BROKER_ONLY_PARAMS = ("wait", "wait_timeout")


def without_broker_params(url: str) -> str:
    """``url`` without the broker's own parameters, for the result backend sharing the broker's URL."""
    return take_params(url, BROKER_ONLY_PARAMS)[0]


def _connected(topology: Topology, **options: Any) -> tuple[Any, list[redis.Redis]]:
    """:func:`sync_client`; RedisCluster connects to learn its nodes when built, and a cluster it cannot
    reach counts as a connection fault (so it is retried, then BrokerUnavailable), as on one server."""
    try:
        return sync_client(topology, **options)
    except RedisClusterException as exc:
        raise redis.ConnectionError(str(exc)) from exc


def load_script_source(name: str) -> str:
    """The Lua source of ``name`` from the package data, with the shared helpers for queue scripts."""
    folder = importlib.resources.files("conveyor.brokers.redis") / "scripts"
    source = (folder / f"{name}.lua").read_text(encoding="utf-8")
    if name in QUEUE_SCRIPTS:
        source = (folder / "_common.lua").read_text(encoding="utf-8") + "\n" + source
    return source


class RedisConnection:
    """Two redis-py clients (ordinary commands, blocking pops), the retry loop and the scripts.

    On Redis Cluster (``redis+cluster://``) the hot path goes through redis-py's cluster client
    (its routing by slot and MOVED handling) instead of a connection of this thread's own.

    Args:
        url: a redis-py URL, or a ``redis+sentinel://`` or ``redis+cluster://`` one (no ``prefix``).
        printable: the URL without its password, for error messages.
        retry_for: seconds a call keeps retrying connection errors before BrokerUnavailable.
        socket_timeout: seconds any one command may take.
        connect_timeout: seconds to open a connection.
        max_block: longest blocking pop in seconds; its socket timeout is this plus ``socket_timeout``.
        scripts: names of the Lua scripts to register.
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
        scripts: Sequence[str] = (),
    ) -> None:
        self.printable = printable
        self.retry_for = retry_for
        self.max_block = max_block
        options: dict[str, Any] = {"socket_connect_timeout": connect_timeout, "retry": Retry(NoBackoff(), 0)}
        self.topology = parse(url)
        #: True on Redis Cluster: no command may span slots (callers split their MULTIs and blocking pops).
        self.clustered = self.topology.clustered
        self._sentinel = self.topology.kind == "sentinel"
        # Typed as redis.Redis: RedisCluster offers the same commands and pipelines conveyor uses.
        client, sentinels = self.call(lambda: _connected(self.topology, socket_timeout=socket_timeout, **options))
        blocking, more = self.call(
            lambda: _connected(self.topology, socket_timeout=max_block + socket_timeout, **options)
        )
        self.client, self.blocking = cast("redis.Redis", client), cast("redis.Redis", blocking)
        #: The sentinels' clients (Sentinel only), closed with the others.
        self._sentinels = sentinels + more
        self.scripts: dict[str, Script] = {
            name: self.client.register_script(load_script_source(name)) for name in scripts
        }
        self._own = threading.local()
        self._owned: list[tuple[int, AbstractConnection]] = []
        self._owned_lock = threading.Lock()
        self._aio_options = (url, socket_timeout, connect_timeout)
        self._aio: AsyncRedis | None = None

    @property
    def aio(self) -> AsyncRedis:
        """The asyncio side (same server, settings and scripts), built on first use."""
        if self._aio is None:
            url, socket_timeout, connect_timeout = self._aio_options
            self._aio = AsyncRedis(
                url,
                self.printable,
                retry_for=self.retry_for,
                socket_timeout=socket_timeout,
                connect_timeout=connect_timeout,
                max_block=self.max_block,
                scripts={name: load_script_source(name) for name in self.scripts},
            )
        return self._aio

    def call(self, op: Callable[[], T]) -> T:
        """Run ``op``, retrying connection errors and timeouts with backoff for ``retry_for`` seconds.

        Raises:
            BrokerUnavailable: Redis did not answer within ``retry_for`` seconds.
        """
        deadline = time.monotonic() + self.retry_for
        delay = 0.0
        while True:
            try:
                return op()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise unavailable(self.printable, self.retry_for, exc) from exc
                time.sleep(min(delay, remaining))
                delay = next_pause(delay)

    def run(self, name: str, keys: Sequence[str], args: Sequence[str | bytes | int | float]) -> Any:
        """Run one script (EVALSHA; loaded again after NOSCRIPT), with retries."""
        script = self.scripts[name]
        return self.call(lambda: self._evalsha(script, keys, args))

    def _evalsha(self, script: Script, keys: Sequence[str], args: Sequence[str | bytes | int | float]) -> Any:
        try:
            return self._send_and_read(("EVALSHA", script.sha, len(keys), *keys, *args))
        except NoScriptError:  # the server lost its scripts: redis-py's Script loads this one and runs it
            return script(keys=keys, args=args)

    def run_confirmed(
        self, name: str, keys: Sequence[str], args: Sequence[str | bytes | int | float], replicas: int, timeout: float
    ) -> Any:
        """Run one script, then ``WAIT replicas timeout`` on the same connection: one round trip.

        Raises:
            BrokerUnavailable: fewer than ``replicas`` replicas confirmed the write within ``timeout``
                seconds (the script's writes did happen on the master: a failover may still lose them).
        """
        script = self.scripts[name]
        wait = ("WAIT", replicas, max(1, int(timeout * 1000)))

        def attempt() -> Any:
            for first in (True, False):
                reply, acked = self._send_and_read_all([("EVALSHA", script.sha, len(keys), *keys, *args), wait])
                if isinstance(reply, NoScriptError) and first:
                    self.load_scripts()
                    continue
                if isinstance(reply, Exception):
                    raise reply
                if int(acked) < replicas:
                    raise unconfirmed(self.printable, replicas, int(acked), timeout)
                return reply
            raise AssertionError("unreachable")  # pragma: no cover

        return self.call(attempt)

    def confirm(self, key: str, replicas: int, timeout: float) -> None:
        """Wait until ``replicas`` replicas hold every write the server took so far (its replication offset).

        WAIT counts the writes of its own connection; one idempotent write (``SET key 1``: a queue's
        registry marker) on this thread's connection first brings its offset up to the server's,
        so the writes other connections made before (a MULTI of ``run_many``) are covered too.

        Raises:
            BrokerUnavailable: fewer than ``replicas`` confirmed within ``timeout`` seconds.
        """
        wait = ("WAIT", replicas, max(1, int(timeout * 1000)))

        def attempt() -> None:
            _, acked = self._send_and_read_all([("SET", key, b"1"), wait])
            if int(acked) < replicas:
                raise unconfirmed(self.printable, replicas, int(acked), timeout)

        self.call(attempt)

    def _send_and_read_all(self, commands: Sequence[Sequence[str | bytes | int | float]]) -> list[Any]:
        """Send ``commands`` pipelined on this thread's connection and read every reply (an error reply as a value)."""
        if self.clustered:
            raise AssertionError("cluster connections have no connection of their own")  # pragma: no cover
        conn = self._own_connection()
        try:
            if self._sentinel:
                conn.connect()  # type: ignore[no-untyped-call]  # see _send_and_read
            packed = [hiredis.pack_command(tuple(command)) for command in commands]  # type: ignore[arg-type]
            conn.send_packed_command(packed, check_health=False)  # type: ignore[no-untyped-call]
            replies: list[Any] = []
            for _ in commands:
                try:
                    replies.append(conn.read_response())
                except redis.ResponseError as exc:  # read whole: go on with the next reply
                    replies.append(exc)
            return replies
        except BaseException:
            conn.disconnect()  # type: ignore[no-untyped-call]
            raise

    def command(self, *args: str | bytes | int | float) -> Any:
        """Run one plain command (e.g. ``GET key``) with retries; the raw reply (bytes, not decoded)."""
        return self.call(lambda: self._send_and_read(args))

    def _send_and_read(self, command: Sequence[str | bytes | int | float]) -> Any:
        """Send one command on this thread's own connection and read its raw reply: the hot path's calls.

        redis-py's command machinery (pool checkout with a readiness poll of the socket, retry
        wrapper, observability hooks, response callbacks, none of which these replies need)
        costs about as much as the round trip itself; this keeps only the send and the read. A
        socket error disconnects the connection and reaches :meth:`call`, which retries; the
        connection reconnects on its next command. On Cluster, the cluster client routes the command.
        """
        if self.clustered:
            return self.client.execute_command(*command)  # type: ignore[no-untyped-call]
        conn = self._own_connection()
        try:
            if self._sentinel:
                # A command sent on an unconnected connection opens it with connect_check_health,
                # past SentinelManagedConnection.connect: it would dial the default localhost:6379
                # instead of asking the sentinels for the master. connect() asks them (no-op when open).
                conn.connect()  # type: ignore[no-untyped-call]
            # hiredis packs directly: redis-py's packer re-checks every argument's type first, which
            # cost as much as the rest of the Python on an enqueue (issue 6).
            packed = hiredis.pack_command(tuple(command))  # type: ignore[arg-type]  # its stub declares a 1-tuple
            conn.send_packed_command([packed], check_health=False)  # type: ignore[no-untyped-call]
            return conn.read_response()
        except redis.ResponseError:  # an error reply was read whole: the connection is fine
            raise
        except BaseException:
            # A reply may be left unread: never read it as the next call's.
            conn.disconnect()  # type: ignore[no-untyped-call]
            raise

    def _own_connection(self) -> AbstractConnection:
        """This thread's connection for single script calls, kept outside the pool; opened anew after a fork."""
        conn: AbstractConnection | None = getattr(self._own, "conn", None)
        if conn is None or self._own.pid != os.getpid():
            pool = self.client.connection_pool
            conn = pool.connection_class(**pool.connection_kwargs)
            self._own.conn, self._own.pid = conn, os.getpid()
            with self._owned_lock:
                self._owned.append((os.getpid(), conn))
        return conn

    def run_many(
        self,
        calls: Sequence[ScriptCall],
        *,
        transaction: bool = False,
        extra: Callable[[Pipeline], object] | None = None,
    ) -> list[Any]:
        """Run several scripts (and ``extra`` commands after them) in one pipeline: one round trip.

        The callers' scripts are idempotent, so after a NOSCRIPT reply (the server restarted or
        flushed its script cache) the scripts are loaded and the whole pipeline runs again.

        Returns:
            One result per script, then the results of the ``extra`` commands.
        """
        if not transaction and extra is None and not self.clustered:  # scripts only (acks with the next
            return self.call(lambda: self._run_scripts(calls))  # reservation): no Pipeline object
        return self.call(lambda: self._run_pipeline(calls, transaction, extra))

    def _run_scripts(self, calls: Sequence[ScriptCall]) -> list[Any]:
        """Run ``calls`` pipelined on this thread's own connection, as :meth:`_send_and_read` runs one.

        redis-py's ``Pipeline`` (pool checkout, command stack, per-command response handling) cost as much
        Python as the rest of a worker's round trip; this sends the packed commands in one write and reads
        one reply each. An error reply is read whole and kept in its place, so the connection stays in step.
        """
        commands = [("EVALSHA", self.scripts[name].sha, len(keys), *keys, *args) for name, keys, args in calls]
        return self._reloading(lambda: self._send_and_read_all(commands))

    def _run_pipeline(
        self, calls: Sequence[ScriptCall], transaction: bool, extra: Callable[[Pipeline], object] | None
    ) -> list[Any]:
        if self.clustered:
            return self._run_on_cluster(calls, transaction, extra)

        def send() -> list[Any]:
            pipe = self.client.pipeline(transaction=transaction)
            for name, keys, args in calls:
                pipe.evalsha(self.scripts[name].sha, len(keys), *keys, *args)
            if extra is not None:
                extra(pipe)
            results: list[Any] = pipe.execute(raise_on_error=False)
            return results

        return self._reloading(send)

    def _reloading(self, send: Callable[[], list[Any]]) -> list[Any]:
        """``send()``'s replies; after a NOSCRIPT reply the scripts load and it is sent once more.

        The scripts are idempotent, so sending the whole batch again is safe. An error reply raises.
        """
        results = send()
        if any(isinstance(r, NoScriptError) for r in results):
            self.load_scripts()
            results = send()
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results

    def _run_on_cluster(
        self, calls: Sequence[ScriptCall], transaction: bool, extra: Callable[[Pipeline], object] | None
    ) -> list[Any]:
        """:meth:`_run_pipeline` on Redis Cluster: the scripts in one pipeline per node, then ``extra``.

        redis-py's cluster pipeline refuses EVALSHA, so the scripts go out on a plain pipeline to
        the primary of each one's slot (their KEYS share one slot), one round trip per node;
        ``extra`` runs after them on a cluster pipeline (a MULTI there must stay in one slot).
        """
        results: list[Any] = [None] * len(calls)
        by_node: dict[str, list[int]] = {}
        cluster = cast("redis.cluster.RedisCluster", self.client)
        for i, (_, keys, _) in enumerate(calls):
            by_node.setdefault(cluster.get_node_from_key(keys[0]).name, []).append(i)  # type: ignore[no-untyped-call]
        for indexes in by_node.values():
            commands = [
                ("EVALSHA", self.scripts[calls[i][0]].sha, len(calls[i][1]), *calls[i][1], *calls[i][2])
                for i in indexes
            ]
            for i, reply in zip(indexes, self._on_node(self.client, calls[indexes[0]][1][0], commands), strict=True):
                results[i] = reply
        if extra is not None:
            pipe = self.client.pipeline(transaction=transaction)
            extra(pipe)
            results += pipe.execute()
        return results

    def _on_node(self, client: redis.Redis, key: str, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Pipeline ``commands`` to the cluster node that serves ``key``; after NOSCRIPT, load and run them again.

        A MOVED or ASK reply (slots moved since redis-py last looked) makes the client read the
        slot map again and counts as a connection fault, so :meth:`call` retries.
        """
        cluster = cast("redis.cluster.RedisCluster", client)
        node_client = cluster.get_redis_connection(cluster.get_node_from_key(key))  # type: ignore[no-untyped-call]
        for attempt in range(2):
            pipe = node_client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)  # type: ignore[no-untyped-call]
            replies: list[Any] = pipe.execute(raise_on_error=False)
            if attempt == 0 and any(isinstance(r, NoScriptError) for r in replies):
                self.load_scripts()
                continue
            for reply in replies:
                if isinstance(reply, (MovedError, AskError, TryAgainError, ClusterDownError)):
                    cluster.nodes_manager.initialize()
                    raise redis.ConnectionError(f"the cluster moved: {reply}") from reply
                if isinstance(reply, Exception) and not isinstance(reply, NoScriptError):
                    raise reply
            return replies
        raise AssertionError("unreachable")  # pragma: no cover

    def block_then_run(
        self,
        lists: Sequence[str],
        timeout: float,
        name: str,
        keys: Sequence[str],
        args: Sequence[str | bytes | int | float],
    ) -> Any:
        """BLPOP ``lists`` for up to ``timeout`` seconds, then run a script, pipelined on one connection.

        Redis runs the script the moment the pop returns (a token arrived or the time ran out), so a
        wake-up and the work it triggers cost one round trip. Not a MULTI: inside one, BLPOP would not block.
        """
        if self.clustered:  # a plain pipeline to the node of the script's slot (the lists share it)
            pop = ("BLPOP", *lists, timeout)
            run = ("EVALSHA", self.scripts[name].sha, len(keys), *keys, *args)
            return self._on_node(self.blocking, keys[0], [pop, run])[1]
        pipe = self.blocking.pipeline(transaction=False)
        pipe.blpop(lists, timeout=timeout)
        pipe.evalsha(self.scripts[name].sha, len(keys), *keys, *args)
        result = pipe.execute(raise_on_error=False)[1]
        if isinstance(result, NoScriptError):  # the server lost its scripts: load and run this one again
            return self.scripts[name](keys=keys, args=args)
        if isinstance(result, Exception):
            raise result
        return result

    def push_token(self, key: str, ttl_ms: int) -> None:
        """LPUSH a token to ``key`` (gone after ``ttl_ms`` if nobody pops it): one try, errors ignored.

        For a signal handler: it opens a connection of its own (no pool, no lock, no retry), since the
        interrupted thread may hold a connection or the pool's lock, and closes it after. On Cluster, to
        the node of ``key``'s slot; on Sentinel, to the master the pool found last (asking the sentinels
        would take their pools' locks).
        """
        client = self.client
        if self.clustered:
            cluster = cast("redis.cluster.RedisCluster", client)
            client = cluster.get_redis_connection(cluster.get_node_from_key(key))  # type: ignore[no-untyped-call]
        pool = client.connection_pool
        options = {**pool.connection_kwargs, "socket_timeout": 1.0, "socket_connect_timeout": 1.0}
        if self._sentinel:
            address = getattr(pool, "master_address", None)
            if address is None:  # no command went out yet: nothing can be blocked
                return
            options.pop("connection_pool", None)
            conn: Any = redis.connection.Connection(**{**options, "host": address[0], "port": address[1]})  # type: ignore[no-untyped-call]
        else:
            conn = pool.connection_class(**options)
        try:
            conn.send_packed_command(conn.pack_commands([("LPUSH", key, b"1"), ("PEXPIRE", key, ttl_ms)]))
            conn.read_response()
            conn.read_response()
        except (redis.RedisError, OSError):
            pass  # the wait then ends at its timeout
        finally:
            conn.disconnect()

    def load_scripts(self) -> None:
        """SCRIPT LOAD every registered script (after the server lost its script cache)."""
        if self.clustered:  # redis-py sends SCRIPT LOAD to every primary, but not from a pipeline
            for script in self.scripts.values():
                self.client.script_load(script.script)
            return
        pipe = self.client.pipeline(transaction=False)
        for script in self.scripts.values():
            pipe.script_load(script.script)
        pipe.execute()

    async def aclose(self) -> None:
        """Close the running event loop's async connections (they reopen if used again)."""
        if self._aio is not None:
            await self._aio.aclose()

    def close(self) -> None:
        """Disconnect both pools and this process's own connections; each reconnects on its next command."""
        for client in (self.client, self.blocking):
            if self.clustered:
                # RedisCluster.close() forgets the cluster's nodes (the client is dead after it): only
                # disconnect each node's pool, which reconnects on its next command as redis.Redis does.
                for node in cast("redis.cluster.RedisCluster", client).get_nodes():  # type: ignore[no-untyped-call]
                    if node.redis_connection is not None:
                        node.redis_connection.connection_pool.disconnect()
            else:
                client.close()
        for sentinel in self._sentinels:
            sentinel.close()
        with self._owned_lock:
            mine = [conn for pid, conn in self._owned if pid == os.getpid()]
        for conn in mine:
            conn.disconnect()  # type: ignore[no-untyped-call]
