"""The unit tier is pure: a test here that opens a network connection or starts a process fails.

Unit tests need no server and no process, so ``pytest tests/unit`` runs anywhere in seconds. A test
that needs a broker belongs in ``tests/conformance`` (every engine) or ``tests/engines/<engine>``;
one that needs a real worker or a private server in ``tests/e2e`` (docs/testing-the-project.md).
The guard below turns such a test into a failure that says so, instead of letting the tier grow
slow again. The in-process engines stay allowed (``memory://``; ``sqlite://`` on a tmp file),
and so do local socket pairs (asyncio's event loop wakes itself through one).
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import croniter  # noqa: F401  # its import runs `file -b` (platform.architecture); conveyor imports it lazily
import pytest

#: Seconds one unit test may take (the whole tier must stay under 10 s on 2 cores).
UNIT_TIMEOUT = 10
#: This tier's folder.
HERE = Path(__file__).parent
#: Socket families whose connections reach another process.
NETWORK_FAMILIES = (socket.AF_INET, socket.AF_INET6)


class ImpureUnitTest(AssertionError):
    """A unit test reached for the network or started a process."""


def _refuse(what: str) -> NoReturn:
    raise ImpureUnitTest(
        f"tests/unit is pure, yet this test {what}: move it to tests/conformance, tests/engines/<engine> or tests/e2e"
    )


@pytest.fixture(autouse=True)
def pure(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Refuse TCP connections, subprocesses and fork() for the length of each unit test."""
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def connect(self: socket.socket, address: Any) -> None:
        if self.family in NETWORK_FAMILIES:
            self.close()  # the caller never gets it back to close
            _refuse(f"connected to {address!r}")
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        if self.family in NETWORK_FAMILIES:
            self.close()
            _refuse(f"connected to {address!r}")
        return real_connect_ex(self, address)

    def popen(self: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
        _refuse(f"started the process {args!r}")

    def fork() -> int:
        _refuse("forked")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(subprocess.Popen, "__init__", popen)
    monkeypatch.setattr(os, "fork", fork)
    yield


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give every unit test a tight timeout: a slow one is in the wrong tier or has a bug."""
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.timeout(UNIT_TIMEOUT))
