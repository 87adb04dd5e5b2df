"""OpenTelemetry: a producer's trace reaches the task run through the message headers (SDK in-memory exporter)."""

from __future__ import annotations

import pytest

from conveyor import App
from conveyor.testing import drain

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from conveyor.otel import OpenTelemetry


def test_a_task_run_is_a_child_of_its_enqueueing_span_and_linked_to_it() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = App("traced", broker_url="memory://", backend_url="memory://")
    app.add_middleware(OpenTelemetry(tracer_provider=provider))

    @app.task(name="add")
    def add(a: int, b: int) -> int:
        return a + b

    @app.task(name="fail")
    def fail() -> None:
        raise ValueError("nope")

    # Given a request span on the producer side (a web handler) that enqueues two tasks
    with provider.get_tracer("web").start_as_current_span("GET /checkout") as request:
        message = add.message((1, 2))
        [ok_id] = app.send([message])
        bad = fail.delay()
    trace_id = request.get_span_context().trace_id
    assert f"{trace_id:032x}" in message.headers["traceparent"]  # W3C trace context, in the encoded body
    ok = app.result(ok_id)
    drain(app)
    assert ok.get(timeout=1) == 3
    spans = {span.name: span for span in exporter.get_finished_spans()}
    send, run = spans["send add"], spans["run add"]
    # Then the send span is the request's child, and the run span the send span's child, linked to it
    assert send.kind is SpanKind.PRODUCER and send.parent is not None
    assert send.parent.span_id == request.get_span_context().span_id
    assert run.kind is SpanKind.CONSUMER and run.context.trace_id == trace_id
    assert run.parent is not None and run.parent.span_id == send.context.span_id
    assert [link.context.span_id for link in run.links] == [send.context.span_id]
    assert run.attributes is not None and run.attributes["messaging.message.id"] == ok.id
    # And a failing run records its exception
    failed = spans["run fail"]
    assert failed.status.status_code is StatusCode.ERROR and failed.events[0].name == "exception"
    assert failed.attributes is not None and failed.attributes["messaging.message.id"] == bad.id


def test_without_the_middleware_no_header_is_added() -> None:
    app = App("plain", broker_url="memory://", backend_url="memory://")

    @app.task(name="noop")
    def noop() -> None:
        return None

    message = noop.message(())
    app.send([message])
    assert message.headers == {}
