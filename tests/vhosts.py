"""A pool of fresh RabbitMQ vhosts, so that each test still gets a vhost of its own, cheaply.

``rabbitmqctl`` boots an Erlang VM per call (about 0.8 s), and a vhost per test took three calls:
2.4 s of every AMQP test, most of the suite's time on RabbitMQ (issue 13). One ``rabbitmqctl eval``
creates a whole batch of vhosts with guest's permissions in about a second, and another deletes
the used ones in the background; each vhost still serves one test only and is deleted after it.
If ``eval`` is refused (a RabbitMQ whose internal API differs), the pool falls back to the plain
commands, one vhost at a time.
"""

from __future__ import annotations

import subprocess
import threading
import uuid

#: Vhosts created per ``rabbitmqctl eval``, and used vhosts deleted per background call.
BATCH = 25
#: Seconds one ``rabbitmqctl`` call may take.
CALL_TIMEOUT = 60


def rabbitmqctl(*args: str) -> None:
    """Run ``rabbitmqctl`` and fail with its output if it fails."""
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=CALL_TIMEOUT)


def _binaries(names: list[str]) -> str:
    return "[" + ", ".join(f'<<"{name}">>' for name in names) + "]"


def _create_expression(names: list[str]) -> str:
    return (
        'lists:foreach(fun(V) -> ok = rabbit_vhost:add(V, <<"conveyor-tests">>), '
        'ok = rabbit_auth_backend_internal:set_permissions(<<"guest">>, V, <<".*">>, <<".*">>, <<".*">>, '
        '<<"conveyor-tests">>) end, ' + _binaries(names) + "), ok."
    )


def _delete_expression(names: list[str]) -> str:
    return 'lists:foreach(fun(V) -> rabbit_vhost:delete(V, <<"conveyor-tests">>) end, ' + _binaries(names) + "), ok."


class VhostPool:
    """Fresh vhosts on demand; used ones are deleted in batches, in the background, and all at :meth:`close`."""

    def __init__(self) -> None:
        self._ready: list[str] = []
        self._used: list[str] = []
        self._deleting: list[subprocess.Popen[bytes]] = []
        self._eval_works = True
        self._lock = threading.Lock()

    def take(self) -> str:
        """A vhost nobody has used, with every permission for guest."""
        with self._lock:
            if not self._ready:
                self._refill()
            return self._ready.pop()

    def give_back(self, vhost: str) -> None:
        """The test is over: delete ``vhost`` with everything in it (soon, in the background)."""
        with self._lock:
            self._used.append(vhost)
            if len(self._used) >= BATCH:
                self._delete_used(wait=False)

    def close(self) -> None:
        """Delete every vhost this pool made, and wait for the deletions."""
        with self._lock:
            self._used += self._ready
            self._ready = []
            self._delete_used(wait=True)
            for process in self._deleting:
                process.wait(timeout=CALL_TIMEOUT)
            self._deleting = []

    def _refill(self) -> None:
        names = [f"cvtest-{uuid.uuid4().hex[:12]}" for _ in range(BATCH if self._eval_works else 1)]
        if self._eval_works:
            try:
                rabbitmqctl("eval", _create_expression(names))
                self._ready += names
                return
            except subprocess.CalledProcessError:
                self._eval_works = False  # another RabbitMQ version: plain commands from now on
                self._used += names  # whatever the failed call made is deleted at the end
                names = [f"cvtest-{uuid.uuid4().hex[:12]}"]
        rabbitmqctl("add_vhost", names[0])
        rabbitmqctl("set_permissions", "-p", names[0], "guest", ".*", ".*", ".*")
        self._ready += names

    def _delete_used(self, wait: bool) -> None:
        used, self._used = self._used, []
        if not used:
            return
        self._deleting = [p for p in self._deleting if p.poll() is None]
        if self._eval_works:
            command = ["rabbitmqctl", "-q", "eval", _delete_expression(used)]
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if wait:
                process.wait(timeout=CALL_TIMEOUT)
            else:
                self._deleting.append(process)
            return
        for vhost in used:
            subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True, timeout=CALL_TIMEOUT)
