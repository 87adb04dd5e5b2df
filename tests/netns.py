"""Test hosts in Linux network namespaces, joined by veth pairs to a bridge, for partition tests.

Each :class:`Host` is a network namespace with one veth link to a bridge in the root namespace (the
test process reaches every host through the bridge's own address). :meth:`Network.cut` takes a
host's link down on the bridge side: packets between it and everyone else are dropped (no reset,
no error at once, as with a pulled cable or a firewall); :meth:`Network.heal` brings it up again.

Names carry a random run id, so two runs never collide, and :meth:`Network.close` removes every
namespace, link and bridge it made (and kills what still runs in the namespaces), also after a
failure. Creating namespaces needs root with CAP_NET_ADMIN and CAP_SYS_ADMIN; :func:`netns_allowed`
says why not where they are missing.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["Host", "Network", "netns_allowed", "network"]

#: Capability bits (linux/capability.h) that ``ip netns add`` and veth links need.
CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
STATUS = Path("/proc/self/status")


def _ip(*args: str, netns: str | None = None) -> str:
    command = ["ip", *(["-n", netns] if netns else []), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    if done.returncode != 0:
        raise OSError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _capabilities() -> int:
    with STATUS.open() as status:
        for line in status:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def netns_allowed() -> str | None:
    """None when this process may make namespaces and links; otherwise why not (for a skip's reason)."""
    if not STATUS.exists() or shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed, or this is not Linux"
    caps = _capabilities()
    missing = [
        name
        for bit, name in ((CAP_NET_ADMIN, "CAP_NET_ADMIN"), (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"))
        if not caps >> bit & 1
    ]
    if missing:
        return f"network namespaces need {' and '.join(missing)} (run as root, or in a privileged container)"
    return None


class Host:
    """One test host: a network namespace, its address on the test network, and its link to the bridge."""

    def __init__(self, name: str, netns: str, address: str, link: str) -> None:
        self.name = name
        self.netns = netns
        self.address = address
        self.link = link  # the bridge side of its veth pair (root namespace)

    def command(self, *argv: str) -> list[str]:
        """``argv`` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def __repr__(self) -> str:
        return f"Host({self.name!r}, {self.address})"


class Network:
    """A bridge in the root namespace and the hosts joined to it; see the module docstring."""

    def __init__(self) -> None:
        self.run = uuid.uuid4().hex[:6]
        self.bridge = f"cv{self.run}br"
        self.subnet = _free_subnet()
        self.gateway = str(self.subnet.network_address + 1)
        self.hosts: list[Host] = []
        self._bridge_made = False

    def start(self) -> None:
        """Make the bridge, with the first address of the subnet (the test process's own)."""
        _ip("link", "add", self.bridge, "type", "bridge", "stp_state", "0", "forward_delay", "0")
        self._bridge_made = True
        _ip("addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def add(self, name: str) -> Host:
        """A new host on the bridge, named ``name`` in reports."""
        index = len(self.hosts)
        netns, link, peer = f"cv{self.run}-{name}", f"cv{self.run}v{index}", f"cv{self.run}p{index}"
        address = str(self.subnet.network_address + 10 + index)
        host = Host(name, netns, address, link)
        _ip("netns", "add", netns)
        self.hosts.append(host)
        _ip("link", "add", link, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "netns", netns)
        _ip("link", "set", link, "master", self.bridge)
        _ip("link", "set", link, "up")
        _ip("addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", peer, netns=netns)
        _ip("link", "set", peer, "up", netns=netns)
        _ip("link", "set", "lo", "up", netns=netns)
        return host

    def cut(self, host: Host) -> None:
        """Cut ``host`` off: its link goes down on the bridge side, and every packet to or from it is dropped."""
        _ip("link", "set", host.link, "down")

    def heal(self, host: Host) -> None:
        """Join ``host`` to the network again."""
        _ip("link", "set", host.link, "up")

    def close(self) -> None:
        """Kill what still runs in the hosts, then remove every namespace, link and the bridge (errors ignored)."""
        for host in self.hosts:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                for pid in _ip("netns", "pids", host.netns).split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                _ip("link", "del", host.link)  # its peer, in the namespace, goes with it
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                _ip("netns", "del", host.netns)
        if self._bridge_made:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                _ip("link", "del", self.bridge)


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.200.0.0-10.249.255.0 that no route of this machine uses yet."""
    used = _ip("-4", "route", "show", "table", "all") + _ip("-4", "addr")
    rng = random.Random()
    for _ in range(100):
        subnet = ipaddress.IPv4Network(f"10.{rng.randint(200, 249)}.{rng.randint(0, 255)}.0/24")
        if str(subnet.network_address).rsplit(".", 1)[0] + "." not in used:
            return subnet
    raise OSError("no free 10.x.y.0/24 subnet for the test network")


@contextlib.contextmanager
def network() -> Iterator[Network]:
    """A started :class:`Network`, removed (with every host) when the block ends, however it ends."""
    net = Network()
    try:
        net.start()
        yield net
    finally:
        net.close()
