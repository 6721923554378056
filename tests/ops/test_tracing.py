"""Tracing: one span per call, continuing the client's trace; content only when opted in."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from ops.messages import Finished
from ops.tracing import CONTENT_MAX_CHARS, Tracing, content_attributes

ROW: dict[str, Any] = {
    "host": "api.openai.com",
    "provider": "openai",
    "api": "chat",
    "model": "gpt-4o-mini-2024-07-18",
    "status": 200,
    "input_tokens": 10,
    "output_tokens": 5,
    "stop_reason": "stop",
    "duration_ms": 250.0,
    "cost_usd": 0.001,
}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def traced() -> tuple[Tracing, InMemorySpanExporter, InMemoryMetricReader]:
    tracing = Tracing()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.tracer = provider.get_tracer("test")
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    tracing.instruments = {
        "tokens": meter.create_histogram("gen_ai.client.token.usage"),
        "duration": meter.create_histogram("gen_ai.client.operation.duration"),
        "cost": meter.create_counter("sluice.cost"),
    }
    return tracing, exporter, reader


def finished(traceparent: str | None = None, request_json: Any = None, **changes: Any) -> Finished:
    return Finished(
        {**ROW, **changes}, "gpt-4o-mini", ROW["model"], traceparent, None, 1_800_000_000.0, request_json
    )


def test_a_span_continues_the_clients_trace_with_the_calls_own_times() -> None:
    tracing, exporter, _ = traced()
    tracing.on_call(finished(f"00-{TRACE_ID}-{PARENT_ID}-01"))
    [span] = exporter.get_finished_spans()
    assert span.name == "chat gpt-4o-mini" and span.kind == SpanKind.CLIENT
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None and format(span.parent.span_id, "016x") == PARENT_ID
    assert span.start_time == 1_800_000_000 * 10**9 and span.end_time - span.start_time == 250_000_000
    assert span.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert span.status.status_code == StatusCode.UNSET


@pytest.mark.parametrize("traceparent", [None, "garbage", "00-" + "0" * 32 + "-" + "0" * 16 + "-01"])
def test_without_a_valid_traceparent_the_span_starts_a_trace(traceparent: str | None) -> None:
    tracing, exporter, _ = traced()
    tracing.on_call(finished(traceparent))
    [span] = exporter.get_finished_spans()
    assert span.parent is None


def test_a_failed_call_is_an_error_span_with_its_type() -> None:
    tracing, exporter, _ = traced()
    tracing.on_call(finished(status=None, error="upstream unreachable: refused"))
    [span] = exporter.get_finished_spans()
    assert span.status.status_code == StatusCode.ERROR
    assert span.attributes["error.type"] == "upstream_unreachable"


def test_content_only_when_opted_in() -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "secret plans"}]}
    tracing, exporter, _ = traced()
    tracing.on_call(finished(request_json=body))  # no opt-in: the feed passes None anyway; the flag decides
    tracing.content = True
    tracing.on_call(finished(request_json=body))
    first, second = exporter.get_finished_spans()
    assert "gen_ai.input.messages" not in first.attributes
    assert json.loads(second.attributes["gen_ai.input.messages"]) == body["messages"]


def test_content_is_cut() -> None:
    found = content_attributes({"input": "x" * (CONTENT_MAX_CHARS * 2), "instructions": "be brief"})
    assert len(found["gen_ai.input.messages"]) == CONTENT_MAX_CHARS + 1
    assert found["gen_ai.system_instructions"] == '"be brief"'


def test_token_and_duration_metrics() -> None:
    tracing, _, reader = traced()
    tracing.on_call(finished())
    data = reader.get_metrics_data()
    points = {
        metric.name: list(metric.data.data_points)
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    tokens = {p.attributes["gen_ai.token.type"]: p.sum for p in points["gen_ai.client.token.usage"]}
    assert tokens == {"input": 10, "output": 5}
    assert points["gen_ai.client.operation.duration"][0].sum == 0.25


def test_the_sdks_queue_full_warning_is_said_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    sdk = logging.getLogger("opentelemetry.sdk._shared_internal")
    with caplog.at_level(logging.WARNING, logger=sdk.name):
        for _ in range(100):
            sdk.warning("Queue full, dropping %s.", "span")
        sdk.warning("something else")
    assert [record.getMessage() for record in caplog.records] == [
        "Queue full, dropping span.",
        "something else",
    ]
