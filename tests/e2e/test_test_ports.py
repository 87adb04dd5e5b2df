"""The ports the tests give their private servers are never given to another test process meanwhile.

A test that kills its private RabbitMQ and boots it again on the same port once found another test's
new node listening there (a kernel-picked port is free only at the instant it is picked), and
counted the messages of that empty node. ``free_port`` now takes ports below the kernel's ephemeral
range and holds each by a lock file while the process that took it lives.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT
from tests.servers import _PORTS, free_port

HOLDER = (  # takes 20 ports, says which, and holds them until killed
    "from tests.servers import free_port; import sys; "
    "print(*(free_port() for _ in range(20)), flush=True); sys.stdin.read()"
)


def ephemeral_range() -> range:
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return range(int(low), int(high) + 1)


@pytest.mark.timeout(60)
def test_a_port_another_process_holds_is_never_given_out_even_while_nothing_listens_on_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given another test process that took 20 ports and has nothing listening on them (its server is down)
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT
    ) as holder:
        try:
            assert holder.stdout is not None
            held = [int(p) for p in holder.stdout.readline().split()]
            assert len(held) == 20
            # When this process asks for ports starting at each of those
            mine = []
            for port in held:
                monkeypatch.setattr("tests.servers.random.randrange", lambda n, port=port: _PORTS.index(port))
                mine.append(free_port())
            # Then it gets none of them, and none the kernel hands out on its own
            assert not set(mine) & set(held)
            assert not set(mine + held) & set(ephemeral_range())
            assert len(set(mine)) == len(mine)  # nor one it holds itself
        finally:
            holder.kill()
