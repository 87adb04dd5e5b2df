"""Which Redis a URL names: one server, a Sentinel-watched master, or a Redis Cluster; and its clients.

Three forms (the ``prefix=`` parameter is taken off first, by :func:`connection.split_url`):

- ``redis://``, ``rediss://``, ``unix://``: one server, redis-py's own URL.
- ``redis+sentinel://[[user]:password@]host:port[,host:port...]/SERVICE[?db=N&sentinel_password=P]``:
  the master of the Sentinel service ``SERVICE``, found through any of the listed sentinels (at
  least one must answer). The password in the authority is the data servers'; ``sentinel_password``
  the sentinels' own, if they have one. redis-py's :class:`redis.sentinel.Sentinel` asks the
  sentinels for the master's address whenever a connection opens, and drops a connection whose
  server turned replica (``READONLY``), so after a failover the retry loop reconnects to the new master.
- ``redis+cluster://[[user]:password@]host:port[,host:port...]``: a Redis Cluster, found through any
  of the listed nodes (redis-py's :class:`redis.cluster.RedisCluster` learns the rest). Cluster has
  database 0 only. Every script touches keys of one hash slot (``keys.py``).

TLS to sentinels or cluster nodes is not offered yet (``rediss+sentinel`` is refused).
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any, Literal, cast
from urllib.parse import SplitResult, parse_qsl, unquote, urlencode, urlsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.cluster
import redis.sentinel

from conveyor.errors import ConfigurationError

SENTINEL_SCHEME = "redis+sentinel"
CLUSTER_SCHEME = "redis+cluster"
#: Sentinel's usual port, for a host written without one.
SENTINEL_PORT = 26379
REDIS_PORT = 6379

Kind = Literal["single", "sentinel", "cluster"]


@dataclasses.dataclass(frozen=True)
class Topology:
    """What a conveyor Redis URL (without ``prefix``) names.

    Attributes:
        kind: ``single``, ``sentinel`` or ``cluster``.
        url: the redis-py URL (``single`` only).
        hosts: the sentinels or the cluster's startup nodes.
        service: the Sentinel service name.
        options: connection options for the data servers (db, username, password).
        sentinel_options: connection options for the sentinels themselves (their password).
    """

    kind: Kind
    url: str = ""
    hosts: tuple[tuple[str, int], ...] = ()
    service: str = ""
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    sentinel_options: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def clustered(self) -> bool:
        return self.kind == "cluster"


def parse(url: str) -> Topology:
    """The topology of ``url``.

    Raises:
        ConfigurationError: a Sentinel URL without a service name or hosts, an unknown parameter,
            or a database other than 0 on Cluster.
    """
    scheme = url.partition("://")[0].lower()
    if scheme not in (SENTINEL_SCHEME, CLUSTER_SCHEME):
        if scheme.endswith(("+sentinel", "+cluster")):
            raise ConfigurationError(f"{scheme}:// is not supported (TLS to Sentinel or Cluster is not offered yet)")
        return Topology("single", url=url)
    parts = urlsplit(url)
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    options = _credentials(userinfo)
    default_port = SENTINEL_PORT if scheme == SENTINEL_SCHEME else REDIS_PORT
    hosts = tuple(_host(item, default_port, url) for item in hostlist.split(",") if item)
    if not hosts:
        raise ConfigurationError(f"no host in Redis URL {scheme}://...")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    sentinel_options: dict[str, Any] = {}
    if "sentinel_password" in query:
        sentinel_options["password"] = query.pop("sentinel_password")
    db = int(query.pop("db", "0") or "0")
    if query:
        raise ConfigurationError(f"unknown parameter(s) {sorted(query)} in a {scheme}:// URL")
    if scheme == CLUSTER_SCHEME:
        if db != 0 or parts.path.strip("/"):
            raise ConfigurationError("Redis Cluster has database 0 only: no /db or ?db= in a redis+cluster:// URL")
        return Topology("cluster", hosts=hosts, options=options)
    path = [segment for segment in parts.path.split("/") if segment]
    if not path:
        raise ConfigurationError("a redis+sentinel:// URL names its service: redis+sentinel://host:port/SERVICE")
    if len(path) > 1:  # /SERVICE/N, as some other libraries write the database
        db = int(path[1])
    options["db"] = db
    return Topology(
        "sentinel", hosts=hosts, service=unquote(path[0]), options=options, sentinel_options=sentinel_options
    )


def take_params(url: str, names: tuple[str, ...]) -> tuple[str, dict[str, str]]:
    """``url`` without the query parameters ``names`` (conveyor's own, unknown to redis-py), and their values."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    taken = {name: value for name, value in query if name in names}
    rest = urlencode([(name, value) for name, value in query if name not in names])
    return _keep_slashes(parts._replace(query=rest)), taken


def _keep_slashes(parts: SplitResult) -> str:
    """urlunsplit that keeps ``//`` when the authority is empty (``unix:///path``)."""
    return f"{parts.scheme}://{parts.netloc}{parts.path}" + (f"?{parts.query}" if parts.query else "")


def _credentials(userinfo: str) -> dict[str, Any]:
    """``username`` and ``password`` options from the authority's ``user:password`` part."""
    options: dict[str, Any] = {}
    user, has_password, password = userinfo.partition(":")
    if user:
        options["username"] = unquote(user)
    if has_password:
        options["password"] = unquote(password)
    return options


def _host(item: str, default_port: int, url: str) -> tuple[str, int]:
    host, _, port = item.strip().rpartition(":") if ":" in item else (item.strip(), "", "")
    try:
        return (host or "127.0.0.1", int(port) if port else default_port)
    except ValueError:
        raise ConfigurationError(f"bad host:port {item!r} in a Redis URL") from None


def sync_client(
    topology: Topology, **options: Any
) -> tuple[redis.Redis | redis.cluster.RedisCluster, list[redis.Redis]]:
    """A redis-py client for ``topology`` with ``options`` (timeouts, retry) for every connection.

    Returns:
        The client, and the clients of the sentinels it asks (to close with it).
    """
    if topology.kind == "single":
        return redis.Redis.from_url(topology.url, **options), []
    if topology.kind == "sentinel":
        sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
            list(topology.hosts), sentinel_kwargs=_sentinel_kwargs(topology, options), **options
        )
        master = sentinel.master_for(topology.service, redis_class=redis.Redis, **topology.options)  # type: ignore[no-untyped-call]
        return cast("redis.Redis", master), list(sentinel.sentinels)
    nodes = [redis.cluster.ClusterNode(host, port) for host, port in topology.hosts]  # type: ignore[no-untyped-call]
    return redis.cluster.RedisCluster(startup_nodes=nodes, **topology.options, **options), []


def async_client(
    topology: Topology, **options: Any
) -> tuple[redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster, list[redis.asyncio.Redis]]:
    """The redis.asyncio client for a Sentinel or Cluster ``topology`` (one server: ``aio.py`` builds its own).

    Returns:
        The client, and the clients of the sentinels it asks (to close with it).
    """
    if topology.kind == "sentinel":
        sentinel = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
            list(topology.hosts), sentinel_kwargs=_sentinel_kwargs(topology, options), **options
        )
        for client in sentinel.sentinels:  # no connection is open yet: each opens as a _SentinelConnection
            client.connection_pool.connection_class = _SentinelConnection
        master = sentinel.master_for(topology.service, redis_class=redis.asyncio.Redis, **topology.options)
        return cast("redis.asyncio.Redis", master), list(sentinel.sentinels)
    if topology.kind == "cluster":
        nodes = [redis.asyncio.cluster.ClusterNode(host, port) for host, port in topology.hosts]
        return redis.asyncio.cluster.RedisCluster(startup_nodes=nodes, **topology.options, **options), []
    raise AssertionError(topology.kind)


class _SentinelConnection(redis.asyncio.Connection):
    """A sentinel's async connection whose sends are bounded by ``asyncio.timeout``, not ``asyncio.wait_for``.

    redis.asyncio wraps each send in ``asyncio.wait_for`` when the connection has a ``socket_timeout``
    (a sentinel's has: a stopped sentinel must not hold up the discovery of the master). On Python
    3.11, ``wait_for`` returns its inner call's result when that result and a cancel of the caller
    arrive in the same loop step, and the cancel is lost: a cancelled ``aget`` whose connection was
    asking a sentinel for the master (any first call on a loop, any reconnect) then waited on for its
    whole timeout. ``asyncio.timeout`` never loses a cancel. The send, with the connect and handshake
    it may start, runs within one ``socket_timeout``; the reads keep redis.asyncio's own timeout.
    """

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        limit = self.socket_timeout
        self.socket_timeout = None  # the parent's send then writes without wait_for
        try:
            async with asyncio.timeout(limit):
                await super().send_packed_command(command, check_health)
        except TimeoutError:  # this send's own timeout (a cancel from outside stays a CancelledError)
            raise redis.TimeoutError("Timeout writing to a sentinel") from None
        finally:
            self.socket_timeout = limit


def _sentinel_kwargs(topology: Topology, options: dict[str, Any]) -> dict[str, Any]:
    """Connection options of the sentinels: the data servers' timeouts, the sentinels' own password."""
    timeouts = {k: v for k, v in options.items() if k in ("socket_timeout", "socket_connect_timeout")}
    timeout = options.get("socket_connect_timeout")
    if timeout is not None:  # a sentinel answers at once or is down: never wait a command's timeout on one
        timeouts["socket_timeout"] = timeout
    return {**timeouts, **topology.sentinel_options}
