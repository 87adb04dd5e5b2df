"""RabbitMQ isolation for tests: one vhost per test run, one queue prefix per test.

``rabbitmqctl`` boots an Erlang VM per call (about 0.8 s), and a fresh vhost per test took three
calls: 46% of the old tests/unit run (issue 13). Redis tests were always isolated by a key prefix
instead, and the AMQP broker names every object it declares after its URL's ``prefix=`` (it
declares no exchange, only queues under ``PREFIX.``: see conveyor/brokers/amqp/names.py). So each
test process (each xdist worker) makes ONE vhost for the whole run (:class:`RunVhost`), each test
gets a prefix of its own in it, and :func:`delete_queues` deletes a test's queues after it, over
AMQP, in milliseconds. The run's vhost, with anything a test left behind, is deleted at the end.
"""

from __future__ import annotations

import subprocess
import urllib.parse
import uuid
from collections.abc import Iterable

import pika
import pika.exceptions

from conveyor.brokers.amqp.names import H_KIND, declarations, queue_names, registry_name

#: Seconds one ``rabbitmqctl`` call may take.
CALL_TIMEOUT = 60


def rabbitmqctl(*args: str) -> None:
    """Run ``rabbitmqctl`` and fail with its output if it fails."""
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=CALL_TIMEOUT)


#: Erlang run by ``rabbitmqctl eval``: make vhost NAME and give guest every permission in it.
_MAKE = (
    'ok = rabbit_vhost:add(<<"NAME">>, <<"conveyor-tests">>), '
    'ok = rabbit_auth_backend_internal:set_permissions(<<"guest">>, <<"NAME">>, <<".*">>, <<".*">>, <<".*">>, '
    '<<"conveyor-tests">>).'
)


class RunVhost:
    """A vhost of one test process, made at its first use, in which guest may do anything; deleted at :meth:`close`.

    Args:
        base_url: the server's AMQP URL without a vhost (``amqp://guest:guest@127.0.0.1:5672``).
    """

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.name = f"cvtest-run-{uuid.uuid4().hex[:12]}"
        self._made = False

    def url(self) -> str:
        """The AMQP URL of the vhost, made first if it does not exist yet."""
        if not self._made:
            self._made = True  # from here on close() deletes it, even if making it fails half-way
            try:  # one Erlang VM boot instead of two
                rabbitmqctl("eval", _MAKE.replace("NAME", self.name))
            except subprocess.CalledProcessError:  # a RabbitMQ whose internal API differs
                rabbitmqctl("add_vhost", self.name)
                rabbitmqctl("set_permissions", "-p", self.name, "guest", ".*", ".*", ".*")
        return f"{self.base_url}/{urllib.parse.quote(self.name, safe='')}"

    def close(self) -> None:
        """Delete the vhost with everything in it (nothing happens if it was never made)."""
        if self._made:
            subprocess.run(["rabbitmqctl", "-q", "delete_vhost", self.name], capture_output=True, timeout=CALL_TIMEOUT)
            self._made = False


def delete_queues(url: str, prefixes: Iterable[str]) -> None:
    """Delete every queue the AMQP broker declared under each of ``prefixes`` in the vhost of ``url``.

    AMQP cannot list queues; the broker's registry queue (``PREFIX.registry``) names every conveyor
    queue it declared, and :func:`~conveyor.brokers.amqp.names.declarations` gives each one's queues.
    Deleting a queue that does not exist is no error in RabbitMQ.
    """
    connection = pika.BlockingConnection(pika.URLParameters(url + "?socket_timeout=5&connection_attempts=2"))
    try:
        channel = connection.channel()
        for prefix in prefixes:
            registry = registry_name(prefix)
            try:  # passive: the registry may be classic or quorum (queue_type=quorum)
                channel.queue_declare(registry, passive=True)
            except pika.exceptions.ChannelClosedByBroker:  # 404: the test declared nothing under it
                channel = connection.channel()
                continue
            known: set[str] = set()
            while True:
                method, props, body = channel.basic_get(registry, auto_ack=True)
                if method is None:
                    break
                if (props.headers or {}).get(H_KIND) in ("queue", b"queue"):
                    known.add(body.decode("utf-8", "replace"))
            for queue in sorted(known):
                for name, _ in declarations(queue_names(prefix, queue, quorum=True), "quorum"):  # either type's
                    channel.queue_delete(name)
            channel.queue_delete(registry)
    finally:
        connection.close()


__all__ = ["CALL_TIMEOUT", "RunVhost", "delete_queues", "rabbitmqctl"]
