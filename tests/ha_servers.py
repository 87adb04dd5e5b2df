"""Private highly available Redis set-ups for tests: a Sentinel group and a 3-master Redis Cluster.

- :class:`SentinelGroup`: a master and one replica (two ``redis-server``s) watched by three
  ``redis-server --sentinel`` processes (quorum 2, master down after 1 s), all on free local ports in
  the test's folder. :meth:`SentinelGroup.kill_master` kills the master with SIGKILL, as a crash
  would, and waits until the sentinels promoted the replica; :meth:`SentinelGroup.restart_old_master`
  brings the killed server back as the new master's replica. The group each test process shares is
  made with ``failover=False`` (ready without the sentinels knowing each other) and
  ``down_after_ms=30000`` (a starved master is not failed over under the tests).
- :class:`LocalCluster`: three ``redis-server --cluster-enabled yes`` joined by
  ``redis-cli --cluster create`` (no replicas), each master holding a third of the slots.

Both stop every process they started when their ``with`` block ends. Neither touches the shared Redis.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import redis

from tests.conftest import server_missing, wait_until
from tests.servers import PrivateRedis, free_port

#: The Sentinel service name of every SentinelGroup.
SERVICE = "conveyor-ha"
#: A master sends its data to a new replica at once: by default it waits 5 s for more replicas to
#: sync in one go (diskless sync), at every start and after every failover.
_SYNC_AT_ONCE = ["--repl-diskless-sync-delay", "0"]


def _require(*binaries: str) -> None:
    for binary in binaries:
        if shutil.which(binary) is None:
            server_missing(binary, "the binary is not installed")


class SentinelGroup:
    """Master + replica + three sentinels; :attr:`url` is the ``redis+sentinel://`` URL (no prefix)."""

    def __init__(
        self, folder: Path, *, down_after_ms: int = 1000, timeout: float = 20.0, failover: bool = True
    ) -> None:
        _require("redis-server")
        self.folder = folder
        self.timeout = timeout
        self.down_after_ms = down_after_ms
        #: Wait at start until every sentinel knows the two others (they meet every 2 s), as a
        #: failover's vote needs; a group that never fails over is ready once they know the master.
        self.failover = failover
        (folder / "master").mkdir()
        (folder / "replica").mkdir()
        self.master = PrivateRedis(folder / "master", args=_SYNC_AT_ONCE)
        self.replica = PrivateRedis(
            folder / "replica", args=[*_SYNC_AT_ONCE, "--replicaof", "127.0.0.1", str(self.master.port)]
        )
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SERVICE}"

    def start(self) -> None:
        self.master.start()
        self.replica.start()
        for i, port in enumerate(self.sentinel_ports):
            folder = self.folder / f"sentinel-{i}"
            folder.mkdir()
            conf = folder / "sentinel.conf"  # Sentinel rewrites its configuration file: one each
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {folder}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}\n"
                f"sentinel failover-timeout {SERVICE} 10000\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
            )
            command = ["redis-server", str(conf), "--sentinel"]
            self.sentinels.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        try:
            wait_until(self._ready, self.timeout, "the sentinels to see the replica and each other")
        except AssertionError as exc:  # say which process is gone (a port taken meanwhile?) for the next look
            exited = [
                f"sentinel :{port}"
                for port, p in zip(self.sentinel_ports, self.sentinels, strict=True)
                if p.poll() is not None
            ]
            exited += [
                f"{role} :{server.port}"
                for role, server in (("master", self.master), ("replica", self.replica))
                if server.process is None or server.process.poll() is not None
            ]
            raise AssertionError(f"{exc}; exited: {', '.join(exited) or 'none'}") from None

    def _ready(self) -> bool:
        """Every sentinel knows the master, its replica (linked) and the two other sentinels."""
        try:
            for port in self.sentinel_ports:
                client = redis.Redis(port=port, socket_timeout=0.5, socket_connect_timeout=0.5)
                try:
                    replicas = client.sentinel_slaves(SERVICE)  # one dict each
                    others = cast("list[dict[str, Any]]", client.sentinel_sentinels(SERVICE))
                finally:
                    client.close()
                if len(replicas) != 1 or (self.failover and len(others) != 2):
                    return False
                if any(replicas[0].get(flag) for flag in ("is_sdown", "is_odown", "is_disconnected")):
                    return False
            return self.replica_synced()
        except redis.RedisError:
            return False

    def replica_synced(self) -> bool:
        """The replica's link to the master is up."""
        client = redis.Redis(port=self.replica.port, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            info = client.info("replication")
        finally:
            client.close()
        return bool(info.get("master_link_status") == "up")

    def master_port(self) -> int:
        """The port the first sentinel that answers names as the master's."""
        for port in self.sentinel_ports:
            client = redis.Redis(port=port, socket_timeout=0.5, socket_connect_timeout=0.5)
            try:
                master = cast("tuple[str, int] | None", client.sentinel_get_master_addr_by_name(SERVICE))
                if master is not None:
                    return int(master[1])
            except redis.RedisError:
                continue
            finally:
                client.close()
        raise AssertionError("no sentinel answered")

    def kill_master(self) -> None:
        """SIGKILL the master and wait until the sentinels name the replica as the new master."""
        assert self.master_port() == self.master.port
        self.master.kill()
        wait_until(lambda: self.master_port() == self.replica.port, self.timeout, "the sentinels to fail over")
        self.master, self.replica = self.replica, self.master

    def restart_old_master(self) -> None:
        """Start the server :meth:`kill_master` killed again, as the new master's replica, and wait until it synced.

        As its supervisor would, configured from the sentinels' answer: restarted as it was, it would
        come back a master and the sentinels would turn it into a replica only at their next look
        (up to 10 s).
        """
        self.replica.args = [*_SYNC_AT_ONCE, "--replicaof", "127.0.0.1", str(self.master.port)]
        self.replica.start()
        wait_until(self.replica_synced, 30, "the restarted server to replicate the new master")

    def stop(self) -> None:
        for process in self.sentinels:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
        self.master.kill()
        self.replica.kill()


class LocalCluster:
    """Three cluster-enabled redis-servers made one cluster; :attr:`url` is the ``redis+cluster://`` URL."""

    def __init__(self, folder: Path, *, timeout: float = 20.0) -> None:
        _require("redis-server", "redis-cli")
        self.folder = folder
        self.timeout = timeout
        self.ports = [_cluster_port() for _ in range(3)]
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def start(self) -> None:
        """Start the nodes and join them; on new ports again when a port was taken meanwhile (at most 3 tries).

        A free port is only free when looked at: another test process (other suites run beside this
        one) may bind it before the node does. The node then exits, and its port answers for
        someone else's server, which ``--cluster create`` refuses.
        """
        for attempt in range(3):
            failure = self._start_once()
            if failure is None:
                return
            self.stop()
            if attempt == 2:
                raise AssertionError(f"the cluster did not form on new ports 3 times; last: {failure}")
            self.ports = [_cluster_port() for _ in range(3)]
            self.processes = {}

    def _start_once(self) -> str | None:
        """Start and join the nodes on :attr:`ports`; None when the cluster is ok, else what failed."""
        for port in self.ports:
            (self.folder / f"node-{port}").mkdir()
            self._start_node(port)
        for port in self.ports:
            wait_until(functools.partial(self._own_node_answers, port), self.timeout, f"cluster node {port} to answer")
            if self.processes[port].poll() is not None:
                return f"node {port} exited (its port taken?)"
        create = ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports)]
        create += ["--cluster-replicas", "0", "--cluster-yes"]
        done = subprocess.run(create, capture_output=True, timeout=self.timeout)
        if done.returncode != 0:
            said = (done.stdout + done.stderr).decode(errors="replace")[-500:]
            return f"{' '.join(create)}: exit {done.returncode}: {said}"
        wait_until(self._ok, self.timeout, "the cluster state to be ok on every node")
        return None

    def _own_node_answers(self, port: int) -> bool:
        """The node on ``port`` answers and is this cluster's process (or it exited: the caller looks)."""
        process = self.processes[port]
        if process.poll() is not None:
            return True
        client = redis.Redis(port=port, socket_timeout=0.5, socket_connect_timeout=0.2)
        try:
            return int(client.info("server")["process_id"]) == process.pid
        except redis.RedisError:
            return False
        finally:
            client.close()

    def _start_node(self, port: int) -> None:
        """Start the node on ``port`` in its folder (no persistence: a restarted node comes back empty)."""
        folder = self.folder / f"node-{port}"
        command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)]
        command += ["--save", "", "--appendonly", "no", "--cluster-enabled", "yes"]
        command += ["--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000"]
        self.processes[port] = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def restart_node_empty(self, port: int) -> None:
        """Kill -9 the node on ``port`` and start it again: it keeps its slots (nodes.conf) and loses its data."""
        process = self.processes[port]
        process.kill()
        process.wait(timeout=10)
        self._start_node(port)
        wait_until(functools.partial(_pings, port), self.timeout, f"cluster node {port} to answer again")
        wait_until(self._ok, self.timeout, "the cluster state to be ok again")

    def _ok(self) -> bool:
        for port in self.ports:
            client = redis.Redis(port=port, socket_timeout=0.5, socket_connect_timeout=0.5)
            try:
                if client.cluster("info").get("cluster_state") != "ok":
                    return False
            except redis.RedisError:
                return False
            finally:
                client.close()
        return True

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too (so at most 55535)."""
    for _ in range(1000):
        port = free_port()
        if port <= 55535 and _free(port + 10000):
            return port
    raise AssertionError("no free port pair for a cluster node")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _pings(port: int) -> bool:
    client = redis.Redis(port=port, socket_timeout=0.5, socket_connect_timeout=0.2)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


@contextlib.contextmanager
def sentinel_group(folder: Path, **options: Any) -> Iterator[SentinelGroup]:
    """A started :class:`SentinelGroup`, every process killed when the block ends."""
    group = SentinelGroup(folder, **options)
    try:
        group.start()
        yield group
    finally:
        group.stop()


@contextlib.contextmanager
def local_cluster(folder: Path) -> Iterator[LocalCluster]:
    """A started :class:`LocalCluster`, every node killed when the block ends."""
    cluster = LocalCluster(folder)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


__all__ = ["SERVICE", "LocalCluster", "SentinelGroup", "local_cluster", "sentinel_group"]
