"""The unit tier's guard (tests/unit/conftest.py) refuses the network and processes, and allows the rest."""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.conftest import ImpureUnitTest


def test_a_tcp_connection_fails_the_test_naming_where_it_belongs() -> None:
    with pytest.raises(ImpureUnitTest, match=r"127\.0\.0\.1.*tests/conformance, tests/engines/<engine> or tests/e2e"):
        socket.create_connection(("127.0.0.1", 6379), timeout=1)


def test_a_subprocess_or_a_fork_fails_the_test() -> None:
    with pytest.raises(ImpureUnitTest, match="started the process"):
        subprocess.run([sys.executable, "-c", "pass"], check=False)
    with pytest.raises(ImpureUnitTest, match="forked"):
        multiprocessing.get_context("fork").Process(target=print).start()


def test_an_event_loop_and_an_sqlite_file_are_allowed(tmp_path: Path) -> None:
    assert asyncio.run(asyncio.sleep(0, result=7)) == 7  # the loop's self-pipe is a local socket pair
    with sqlite3.connect(tmp_path / "x.db") as db:
        assert db.execute("select 1").fetchone() == (1,)
