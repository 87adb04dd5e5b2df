"""Promoter: a thread with its own connection that promotes scheduled messages the moment their level runs out.

A delay level (``PREFIX.q.NAME.delay.K``) dead-letters a message into ``PREFIX.q.NAME.eta`` when its
TTL runs out. Something must then move it on: to the ready queue when its eta passed, else to the
level for what remains (never early). A worker used to poll the ``.eta`` queues from its reserve;
a consumer does it without polling, but not on the main channel: a process whose slots all run
long tasks calls no reserve for minutes, and whatever RabbitMQ pushed to its ``.eta`` consumers
would wait there. So each reserving process runs one Promoter: a daemon thread with a connection
of its own, consuming the ``.eta`` queue of every queue the process serves and promoting each
message (publish the copy, ack the original, one transaction) as it arrives. Idle, it sends
nothing but AMQP heartbeats. It dies with its process; a forked child starts its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Iterable

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.spec import Basic, BasicProperties

from conveyor.brokers.amqp.names import QueueNames, level_for, queue_names
from conveyor.brokers.amqp.scan import meta_of, properties

log = logging.getLogger("conveyor.broker")

#: Scheduled messages one ``.eta`` consumer may hold unacknowledged while it promotes them.
PREFETCH = 256
#: Seconds between the thread's looks at new queues to consume (and at its stop flag) while idle.
LOOK_EVERY = 0.2
#: Seconds between reconnection attempts after a fault.
RECONNECT_EVERY = 0.5


def publish_to(ch: BlockingChannel, names: QueueNames, body: bytes, props: BasicProperties, now: float) -> None:
    """Publish a scheduled message to its ready queue (due) or to the level for what remains of its eta."""
    entry = meta_of(props)
    if entry.eta is None or entry.eta <= now:
        entry = dataclasses.replace(entry, eta=None)
        ch.basic_publish("", names.ready_for(entry.priority), body, properties(entry))
        return
    ch.basic_publish("", names.levels[level_for(entry.eta - now)], body, properties(entry))


class Promoter:
    """The process's promoter thread (started on first :meth:`serve`).

    Args:
        params: pika connection parameters (the broker's).
        prefix: the broker's queue prefix.
    """

    def __init__(self, params: pika.URLParameters, prefix: str, quorum: bool = False) -> None:
        self.params = params
        self.prefix = prefix
        self.quorum = quorum  # a ready queue per priority band (names.py)
        self._lock = threading.Lock()
        self._wanted: set[str] = set()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._stopping = threading.Event()

    def serve(self, queues: Iterable[str]) -> None:
        """Promote the scheduled messages of ``queues`` too (cheap when nothing is new)."""
        new = [q for q in queues if q not in self._wanted]
        if new:
            with self._lock:
                self._wanted.update(new)
        if self._pid != os.getpid() or self._thread is None or not self._thread.is_alive():
            if self._pid != os.getpid():  # forked: the parent's thread is not here
                with self._lock:
                    self._wanted = set(queues)
            self._pid = os.getpid()
            self._stopping = threading.Event()
            self._thread = threading.Thread(target=self._run, name="conveyor-amqp-promoter", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Ask the thread to close its connection and end (it ends within LOOK_EVERY)."""
        self._stopping.set()

    def _run(self) -> None:
        stopping = self._stopping
        while not stopping.is_set():
            try:
                self._session(stopping)
            except (pika.exceptions.AMQPError, OSError) as exc:
                log.debug("scheduled-message promoter reconnects after %s: %s", type(exc).__name__, exc)
                stopping.wait(RECONNECT_EVERY)

    def _session(self, stopping: threading.Event) -> None:
        conn = BlockingConnection(self.params)
        try:
            ch = conn.channel()
            ch.tx_select()
            ch.basic_qos(prefetch_count=PREFETCH)
            consumed: set[str] = set()
            arrived: list[tuple[QueueNames, Basic.Deliver, BasicProperties, bytes]] = []
            while not stopping.is_set() and self._pid == os.getpid():
                with self._lock:
                    todo = [q for q in self._wanted if q not in consumed]
                for queue in todo:
                    names = queue_names(self.prefix, queue, self.quorum)

                    def on_message(
                        _ch: BlockingChannel,
                        method: Basic.Deliver,
                        props: BasicProperties,
                        body: bytes,
                        names: QueueNames = names,
                    ) -> None:
                        arrived.append((names, method, props, body))

                    ch.basic_consume(names.eta, on_message)
                    consumed.add(queue)
                conn.process_data_events(LOOK_EVERY)
                if arrived:
                    now = time.time()
                    for names, method, props, body in arrived:
                        publish_to(ch, names, body, props, now)
                        ch.basic_ack(method.delivery_tag)
                    ch.tx_commit()
                    arrived.clear()
        finally:
            if conn.is_open:
                with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                    conn.close()
