"""SQLite results without polling: a result committed by another process wakes the waiters at once.

The writer is a separate Python process (as a worker is). The backend's safety re-read is set far
beyond the test's bounds, so only the wake datagram can end the waits in time.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conveyor import App, BrokerUnavailable
from conveyor.backends.sqlite import SQLiteResultBackend
from conveyor.brokers.sqlite import connection
from conveyor.brokers.sqlite.wake import wake_dir
from conveyor.states import ResultRecord, State, encode_record
from tests.engines.loopticks import loop_ticks

WRITER = """
import sys, time
from conveyor.backends.sqlite import SQLiteResultBackend
from conveyor.states import ResultRecord, State, encode_record
backend = SQLiteResultBackend(sys.argv[1])
backend.get("warm-up")
time.sleep(float(sys.argv[2]))
ids = sys.argv[3:]
print(time.time())
backend.set_many([(i, State.SUCCESS, encode_record(ResultRecord(state=State.SUCCESS, value=i))) for i in ids], 60)
print(time.time())
"""


def test_a_result_written_by_another_process_wakes_sync_and_async_waiters(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'results.db'}"
    backend = SQLiteResultBackend(url)
    backend.recheck = 60.0  # no safety re-read within the test: only a wake can end the waits
    try:
        # Given a thread and a coroutine waiting, and a writer process committing both results 1 s later
        command = [sys.executable, "-c", WRITER, url, "1.0", "sync-id", "async-id"]
        writer = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        woken: dict[str, float] = {}

        def wait_in_thread() -> None:
            assert backend.wait("sync-id", timeout=20) is not None
            woken["sync"] = time.time()

        thread = threading.Thread(target=wait_in_thread)
        thread.start()

        async def wait_in_loop() -> bytes | None:
            return await backend.async_wait("async-id", timeout=20)

        assert asyncio.run(wait_in_loop()) is not None
        woken["async"] = time.time()
        thread.join(20)
        out, _ = writer.communicate(timeout=20)
        before, after = (float(line) for line in out.split())
        # Then both returned as soon as the writer committed (not 60 s later), and no waiter is left
        assert set(woken) == {"sync", "async"}
        assert all(before <= at < after + 0.5 for at in woken.values()), (before, after, woken)
        assert len(backend.wakers) == 0
        # And this process's socket sits in the database's wake directory until the backend closes
        sockets = list(wake_dir(backend.db.path).iterdir())
        assert len(sockets) == 1
    finally:
        backend.close()
    # And closing the backend removes its socket, and the directory with the last one
    assert not wake_dir(backend.db.path).exists()


def test_a_writer_tidies_the_socket_of_a_dead_waiter(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'results.db'}"
    backend = SQLiteResultBackend(url)
    try:
        # Given a socket file left by a process that died (nobody reads it)
        folder = wake_dir(backend.db.path)
        folder.mkdir(parents=True, exist_ok=True)
        import socket

        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as dead:
            dead.bind(str(folder / "999999-dead"))
        # When a final result is written
        backend.set("t", State.SUCCESS, encode_record(ResultRecord(state=State.SUCCESS)), ttl=60)
        # Then the stale socket is gone
        assert not (folder / "999999-dead").exists()
    finally:
        backend.close()


def test_adelay_on_a_locked_database_raises_broker_unavailable_and_sends_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connection, "BUSY_TIMEOUT_MS", 300)
    app = App("locked", broker=f"sqlite:///{tmp_path / 'conveyor.db'}")

    @app.task
    def ping(n: int) -> int:
        return n

    async def scenario() -> None:
        await ping.adelay(1)
        # Given another process's write transaction holding the file's lock
        import sqlite3

        holder = sqlite3.connect(tmp_path / "conveyor.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            # Then adelay fails with BrokerUnavailable naming the file, while the loop runs on
            async with loop_ticks() as ticks:
                with pytest.raises(BrokerUnavailable, match=r"conveyor\.db"):
                    await ping.adelay(2)
            assert ticks.count >= 10  # the event loop was never blocked by the wait for the lock
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        # And nothing of the failed call was stored
        stats = await asyncio.to_thread(app.broker.stats)
        assert [(s.queue, s.ready) for s in stats] == [("default", 1)]

    try:
        asyncio.run(scenario())
    finally:
        app.close()
