"""OpenTelemetry tracing (``pip install conveyor[otel]``): the trace follows a task from its producer to its run.

``App(middleware=[OpenTelemetry()])``. On the producer side (a web request, say) ``before_send``
opens a short PRODUCER span ``send <task>`` under whatever span is current and injects its context
into the message's headers (W3C ``traceparent`` with the global propagator). In the worker,
``around_call`` opens a CONSUMER span ``run <task>`` per attempt: a child of the enqueueing span and
linked to it, carrying the task id, queue, attempt and delivery count; an exception the task raises
is recorded on it and sets its status to ERROR. Exporters and sampling are the application's own
TracerProvider's business (the global one unless ``tracer_provider`` is given).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanKind

from conveyor.message import Message
from conveyor.middleware import Job, Middleware

__all__ = ["OpenTelemetry"]


class OpenTelemetry(Middleware):
    """Trace context in message headers, and a span per task run linked to the span that enqueued it.

    Args:
        tracer_provider: where spans go; the global provider when None.
    """

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self.tracer = trace.get_tracer("conveyor", tracer_provider=tracer_provider)

    def before_send(self, message: Message) -> None:
        attributes = _attributes(message)
        with self.tracer.start_as_current_span(f"send {message.task}", kind=SpanKind.PRODUCER, attributes=attributes):
            propagate.inject(message.headers)

    def around_call(self, job: Job) -> contextlib.AbstractContextManager[None]:
        return self._run_span(job)

    @contextlib.contextmanager
    def _run_span(self, job: Job) -> Iterator[None]:
        parent = propagate.extract(job.message.headers)
        sent = trace.get_current_span(parent).get_span_context()
        links = [Link(sent)] if sent.is_valid else []
        attributes = {**_attributes(job.message), "messaging.conveyor.deliveries": job.delivery.deliveries}
        with self.tracer.start_as_current_span(
            f"run {job.message.task}", context=parent, kind=SpanKind.CONSUMER, links=links, attributes=attributes
        ):
            yield


def _attributes(message: Message) -> dict[str, Any]:
    return {
        "messaging.system": "conveyor",
        "messaging.destination.name": message.queue,
        "messaging.message.id": message.id,
        "messaging.conveyor.task": message.task,
        "messaging.conveyor.attempt": message.attempt,
    }
