"""Trace context across nodes: the node that runs a call continues the answering node's trace."""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from voicebridge import telemetry


def test_a_call_span_on_another_node_joins_the_answering_nodes_trace() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    answering = telemetry._OtelTelemetry(provider.get_tracer("answering"))
    owning = telemetry._OtelTelemetry(provider.get_tracer("owning"))

    incoming = answering.start("call")
    traceparent = answering.traceparent(incoming)
    incoming.end()
    assert traceparent is not None and traceparent.startswith("00-")

    owner = owning.start("call", owning.remote(traceparent))
    owner.end()
    first, second = exporter.get_finished_spans()
    assert second.context.trace_id == first.context.trace_id
    assert second.parent is not None and second.parent.span_id == first.context.span_id


def test_without_telemetry_there_is_no_trace_context() -> None:
    off = telemetry.DISABLED
    assert off.traceparent(off.start("call")) is None
    assert off.remote("00-" + "1" * 32 + "-" + "2" * 16 + "-01") is None
    assert telemetry._OtelTelemetry(TracerProvider().get_tracer("t")).remote("garbage") is None
