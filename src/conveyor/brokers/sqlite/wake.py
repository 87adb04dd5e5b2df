"""Waking waiters in other processes when a SQLite result lands: one datagram socket per waiting process.

SQLite tells no other process about a commit, and a short poll would cost every waiter a read per
interval. Instead, each process that waits on a result of a database binds one Unix datagram socket
in a directory named after the database (``$TMPDIR/conveyor-wake-<hash of its path>/<pid>-<random>``)
and a daemon thread reads it. A process that commits final results sends their ids, after the commit,
to every socket of that directory; each receiving process wakes its own waiters on those ids
(:class:`~conveyor.backends.base.Wakers`). A waiter registers before it reads the record, and the
socket exists before that, so a result committed after the read always reaches it.

The cost for a writer with nobody waiting is one directory listing per batch of final results. A
process removes its socket when its backend closes or the interpreter exits, and the directory with
the last socket; a socket whose process was killed is refused and unlinked by the next writer (an
empty directory may stay behind in ``$TMPDIR``). A datagram that cannot be
delivered in :data:`SEND_TIMEOUT` (the reader is far behind) is dropped; the waiter's safety re-read
(``SQLiteResultBackend.recheck``) finds the result then. Unix sockets only (Linux, macOS): where
``AF_UNIX`` is missing, waiters rely on that re-read alone.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import socket
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

#: Seconds a writer waits for room in one waiter's socket before it drops that datagram.
SEND_TIMEOUT = 0.1
#: Largest datagram sent, in bytes: ids are split over several below it.
MAX_DATAGRAM = 8192
#: The datagram that stops a listener thread (no task id is empty).
_STOP = b"\n"


def wake_dir(db_path: Path) -> Path:
    """The directory of the wake sockets for one database file (a short path: socket paths max ~100 bytes)."""
    digest = hashlib.sha1(str(db_path.resolve()).encode(), usedforsecurity=False).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"conveyor-wake-{digest}"


class WakeChannel:
    """The wake sockets of one database: listen (waiting processes) and notify (writing processes).

    Args:
        db_path: the database file.
        on_wake: called from the listener thread with the ids a writer committed.
    """

    supported = hasattr(socket, "AF_UNIX")

    def __init__(self, db_path: Path, on_wake: Callable[[list[str]], None]) -> None:
        self.dir = wake_dir(db_path)
        self._on_wake = on_wake
        self._lock = threading.Lock()
        self._pid = 0
        self._listener: socket.socket | None = None
        self._path: Path | None = None
        self._sender: socket.socket | None = None

    def listen(self) -> None:
        """Make sure this process has its socket and listener thread (opened once per process, after a fork too)."""
        if not self.supported or (self._listener is not None and self._pid == os.getpid()):
            return
        with self._lock:
            if self._listener is not None and self._pid == os.getpid():
                return
            sock, path = self._bind()
            self._listener, self._path, self._pid = sock, path, os.getpid()
            atexit.register(_remove, path, os.getpid())  # an exit without close() leaves no socket file
            threading.Thread(target=self._read, args=(sock, path), name="conveyor-sqlite-wake", daemon=True).start()

    def _bind(self) -> tuple[socket.socket, Path]:
        """This process's socket in the directory (made again if the last other waiter just removed it)."""
        for attempt in range(3):
            self.dir.mkdir(parents=True, exist_ok=True)
            path = self.dir / f"{os.getpid()}-{os.urandom(3).hex()}"
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                sock.bind(str(path))
                return sock, path
            except FileNotFoundError:  # removed between mkdir and bind by a closing process
                sock.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _read(self, sock: socket.socket, path: Path) -> None:
        try:
            while True:
                data = sock.recv(MAX_DATAGRAM + 64)
                if data == _STOP:
                    return
                self._on_wake([i.decode() for i in data.split(b"\n") if i])
        except OSError:  # closed under us
            return
        finally:
            sock.close()
            _remove(path, os.getpid())

    def notify(self, task_ids: Sequence[str]) -> None:
        """Send ``task_ids`` (committed final) to every waiting process of this database; never raises."""
        if not self.supported or not task_ids:
            return
        try:
            targets = list(self.dir.iterdir())
        except OSError:  # no directory: nobody ever waited
            return
        if not targets:
            return
        for datagram in _chunks(task_ids):
            for target in targets:
                self._send(datagram, target)

    def _send(self, datagram: bytes, target: Path) -> None:
        try:
            self._sending_socket().sendto(datagram, str(target))
        except (ConnectionRefusedError, FileNotFoundError):  # its process died: tidy up after it
            with contextlib.suppress(OSError):
                target.unlink()
        except OSError:  # full for SEND_TIMEOUT, or anything else: the waiter's re-read covers it
            pass

    def _sending_socket(self) -> socket.socket:
        sender = self._sender
        if sender is None or self._pid_of_sender != os.getpid():
            sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sender.settimeout(SEND_TIMEOUT)
            self._sender, self._pid_of_sender = sender, os.getpid()
        return sender

    _pid_of_sender = 0

    def close(self) -> None:
        """Stop this process's listener and remove its socket (it opens again on the next wait)."""
        with self._lock:
            listener, path, pid = self._listener, self._path, self._pid
            self._listener = self._path = None
            if self._sender is not None and self._pid_of_sender == os.getpid():
                self._sender.close()
            self._sender = None
        if listener is None or path is None or pid != os.getpid():
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as stop:
                stop.sendto(_STOP, str(path))
        except OSError:
            listener.close()
        with contextlib.suppress(OSError):
            path.unlink()
        with contextlib.suppress(OSError):  # not empty: another process waits
            self.dir.rmdir()  # the last waiting process leaves no empty directory behind


def _remove(path: Path, pid: int) -> None:
    """At exit of the process that bound ``path``: remove it, and its directory if no other waiter is left."""
    if os.getpid() != pid:  # a forked child exiting: the socket is its parent's
        return
    with contextlib.suppress(OSError):
        path.unlink()
    with contextlib.suppress(OSError):
        path.parent.rmdir()


def _chunks(task_ids: Sequence[str]) -> list[bytes]:
    """The ids joined by newlines, in datagrams of at most MAX_DATAGRAM bytes."""
    out: list[bytes] = []
    current = b""
    for task_id in task_ids:
        item = task_id.encode() + b"\n"
        if current and len(current) + len(item) > MAX_DATAGRAM:
            out.append(current)
            current = b""
        current += item
    if current:
        out.append(current)
    return out
