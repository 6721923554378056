"""OpenTelemetry: `--set sluice_otlp=http://collector:4318` exports one span per provider call, and the GenAI
token and duration metrics, over OTLP/HTTP (off by default).

Spans follow the GenAI semantic conventions (rules/ops.py's `genai_attributes`); a client that sends a W3C
`traceparent` gets the span as a child of its own. Spans are built in the ops process (ops/worker.py) from
the finished call the proxy hands over, with the call's own start and end times, and exported by the
SDK's batch processor on a thread of its own: a collector that is down costs a logged warning and a
bounded buffer
(`MAX_QUEUED_SPANS`; past it the oldest spans are dropped), never a call's time.

Prompt and completion content are not exported. With `--set sluice_otlp_content=true` the request's
messages and system instructions (as sluice sent them upstream) go on the span as
`gen_ai.input.messages` / `gen_ai.system_instructions`, cut at `CONTENT_MAX_CHARS`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

import requests
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ops.messages import Backlog, Finished
from rules.ops import LabelFolder, error_type, genai_attributes, seconds, span_name
from state.ops import Snapshot

log = logging.getLogger("sluice")

MAX_QUEUED_SPANS = 4096
EXPORT_TIMEOUT_S = 5.0
METRICS_EXPORT_MS = 15_000
SPAN_DELAY_MS = 1_000  # a batch leaves at least this often
CONTENT_MAX_CHARS = 64 * 1024
MAX_MODELS = 64
_PROPAGATOR = TraceContextTextMapPropagator()
QUEUE_FULL_EVERY_S = 60.0


class _Sparse(logging.Filter):
    """Lets the SDK's "Queue full, dropping" warning through once per `every_s`: with the collector down
    it would otherwise be logged for every call."""

    def __init__(self, every_s: float) -> None:
        super().__init__()
        self.every_s = every_s
        self.last = -math.inf

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Queue full"):
            return True
        now = time.monotonic()
        if now - self.last < self.every_s:
            return False
        self.last = now
        return True


logging.getLogger("opentelemetry.sdk._shared_internal").addFilter(_Sparse(QUEUE_FULL_EVERY_S))


class Tracing:
    def __init__(self) -> None:
        self.endpoint: str | None = None
        self.tracer_provider: TracerProvider | None = None
        self.meter_provider: MeterProvider | None = None
        self.tracer: Any = None
        self.instruments: dict[str, Any] = {}
        self.content = False
        self.models = LabelFolder(MAX_MODELS)

    def start(self, endpoint: str, content: bool) -> None:
        """Export to `endpoint` (a base URL, checked by the proxy: rules/ops.py's `parse_otlp_endpoint`)."""
        self.content = content
        resource = Resource.create({"service.name": "sluice"})
        # The proxy's own HTTPS_PROXY (if any) is for clients' traffic, not for its telemetry.
        session = requests.Session()
        session.trust_env = False
        spans = OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces", timeout=EXPORT_TIMEOUT_S, session=session)
        self.tracer_provider = TracerProvider(resource=resource)
        self.tracer_provider.add_span_processor(
            BatchSpanProcessor(
                spans,
                max_queue_size=MAX_QUEUED_SPANS,
                schedule_delay_millis=SPAN_DELAY_MS,
                export_timeout_millis=int(EXPORT_TIMEOUT_S * 1000),
            )
        )
        self.tracer = self.tracer_provider.get_tracer("sluice")
        metrics_session = requests.Session()
        metrics_session.trust_env = False
        reader = PeriodicExportingMetricReader(
            OTLPMetricExporter(
                endpoint=f"{endpoint}/v1/metrics", timeout=EXPORT_TIMEOUT_S, session=metrics_session
            ),
            export_interval_millis=METRICS_EXPORT_MS,
        )
        self.meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
        meter = self.meter_provider.get_meter("sluice")
        self.instruments = {
            "tokens": meter.create_histogram(
                "gen_ai.client.token.usage", unit="{token}", description="Tokens used, by gen_ai.token.type"
            ),
            "duration": meter.create_histogram(
                "gen_ai.client.operation.duration", unit="s", description="GenAI operation duration"
            ),
            "cost": meter.create_counter("sluice.cost", unit="USD", description="Cost of provider calls"),
        }
        self.endpoint = endpoint
        log.info("sluice: OpenTelemetry spans and metrics to %s (OTLP/HTTP)", endpoint)

    @property
    def enabled(self) -> bool:
        return self.tracer is not None

    wants_snapshot = False

    def on_call(self, finished: Finished) -> None:
        row = finished.row
        attributes = genai_attributes(
            row, request_model=finished.request_model, response_model=finished.response_model
        )
        if self.content and isinstance(finished.request_json, dict):
            attributes.update(content_attributes(finished.request_json))
        carrier = {
            name: value for name in ("traceparent", "tracestate") if (value := getattr(finished, name))
        }
        parent = _PROPAGATOR.extract(carrier) if carrier else None
        start_ns = int(finished.started * 1e9)
        duration = seconds(row.get("duration_ms")) or 0.0
        span = self.tracer.start_span(
            span_name(row, finished.request_model),
            context=parent,
            kind=SpanKind.CLIENT,
            attributes=attributes,
            start_time=start_ns,
        )
        failure = error_type(row)
        if failure is not None:
            span.set_status(Status(StatusCode.ERROR, failure))
        span.end(end_time=start_ns + int(duration * 1e9))
        self._record_metrics(row, attributes, duration)

    def _record_metrics(self, row: Any, attributes: dict[str, Any], duration: float) -> None:
        # Metric attributes must stay few: provider, operation, folded models, error type.
        common = {
            "gen_ai.provider.name": attributes["gen_ai.provider.name"],
            "gen_ai.operation.name": attributes["gen_ai.operation.name"],
            "gen_ai.request.model": self.models.fold(attributes.get("gen_ai.request.model")),
        }
        if "error.type" in attributes:
            common["error.type"] = attributes["error.type"]
        self.instruments["duration"].record(duration, common)
        for kind, name in (("input", "gen_ai.usage.input_tokens"), ("output", "gen_ai.usage.output_tokens")):
            if isinstance(attributes.get(name), int):
                self.instruments["tokens"].record(attributes[name], {**common, "gen_ai.token.type": kind})
        cost = row.get("cost_usd")
        if isinstance(cost, int | float) and cost > 0:
            self.instruments["cost"].add(cost, common)

    def on_snapshot(self, snapshot: Snapshot, backlog: Backlog) -> None:
        return None

    def close(self) -> None:
        """Flush what is queued (bounded by the export timeout) and stop the exporters."""
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown(timeout_millis=int(EXPORT_TIMEOUT_S * 1000))
        self.tracer_provider = self.meter_provider = self.tracer = None
        self.endpoint = None


def content_attributes(body: dict[str, Any]) -> dict[str, str]:
    """The opted-in content attributes: the messages (`messages` or Responses' `input`) and the system
    instructions, as JSON, each cut at CONTENT_MAX_CHARS."""
    found: dict[str, str] = {}
    messages = body.get("messages", body.get("input"))
    if messages is not None:
        found["gen_ai.input.messages"] = _json(messages)
    system = body.get("system", body.get("instructions"))
    if system is not None:
        found["gen_ai.system_instructions"] = _json(system)
    return found


def _json(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= CONTENT_MAX_CHARS else text[:CONTENT_MAX_CHARS] + "…"
