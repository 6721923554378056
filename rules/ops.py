"""What a finished call looks like to the ops ecosystem: bounded metric labels and GenAI span attributes.

Pure: a `calls` row (a mapping with the columns of state/store/migrations.py) goes in, plain values come
out. Nothing here reads a clock, a database or a credential; the row holds none (credentials are
fingerprints or config labels, never keys).

Attribute names follow the OpenTelemetry GenAI semantic conventions
(https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-spans/): `gen_ai.usage.input_tokens` counts
every input token, cached ones included, and the cache reads and writes are also given on their own.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from rules.call_outcome import is_error
from rules.providers import find_wire_format

OTHER = "other"
NONE = "none"
# A label value longer than this is not a name anyone chose on purpose: it folds into OTHER.
LABEL_MAX_CHARS = 128
# A span attribute from the call (a model name is whatever the client wrote) is cut at this length.
ATTRIBUTE_MAX_CHARS = 512

# Token kinds counted in `sluice_tokens_total{kind=...}`: each token once, so a `sum by` is the total.
# Reasoning tokens are part of `output` and are not a kind of their own.
TOKEN_KINDS: tuple[tuple[str, str], ...] = (
    ("input", "input_tokens"),
    ("cache_read", "cache_read_tokens"),
    ("cache_write_5m", "cache_write_5m_tokens"),
    ("cache_write_1h", "cache_write_1h_tokens"),
    ("output", "output_tokens"),
)


def status_class(status: object) -> str:
    """`2xx`, `4xx`, `5xx`... for an HTTP status; `none` when no response came (the connection died)."""
    if isinstance(status, int) and not isinstance(status, bool) and 100 <= status <= 599:
        return f"{status // 100}xx"
    return NONE


class LabelFolder:
    """Keeps a metric label's distinct values bounded: the first `limit` values seen keep their own series,
    every later one is counted under `other`, as is any value that is empty, overlong or not printable.

    Fails safe: a client that invents a new model name on every call costs one series, not one each.
    Thread-safe (the metrics and the tracing threads share one).
    """

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"a label's value limit cannot be negative (got {limit})")
        self.limit = limit
        self._kept: set[str] = set()
        self._lock = threading.Lock()

    def fold(self, value: object) -> str:
        if value is None:
            return NONE
        text = str(value)
        if text in self._kept:
            return text
        if not text or len(text) > LABEL_MAX_CHARS or not text.isprintable() or text in (OTHER, NONE):
            return OTHER
        with self._lock:
            if len(self._kept) >= self.limit:
                return OTHER
            self._kept.add(text)
        return text

    @property
    def kept(self) -> frozenset[str]:
        return frozenset(self._kept)


def token_counts(row: Mapping[str, Any]) -> list[tuple[str, int]]:
    """(kind, count) for every token kind the row holds a positive count of."""
    counts = []
    for kind, column in TOKEN_KINDS:
        value = row.get(column)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            counts.append((kind, value))
    return counts


def seconds(milliseconds: object) -> float | None:
    if isinstance(milliseconds, int | float) and not isinstance(milliseconds, bool) and milliseconds >= 0:
        return float(milliseconds) / 1000.0
    return None


def operation_name(api: object) -> str:
    """The operation an API performs, in the conventions' well-known values where one fits (its wire
    format's `operation`); the API's own name for one sluice does not know."""
    found = find_wire_format(str(api))
    return found.operation if found is not None else str(api)


def error_type(row: Mapping[str, Any]) -> str | None:
    """The conventions' low-cardinality `error.type`: the HTTP status for a refused call, else the kind
    of failure sluice recorded (`upstream_unreachable`, `connection_lost`, ...); None for a good call."""
    if not is_error(row):
        return None
    status = row.get("status")
    if isinstance(status, int) and status >= 400:
        return str(status)
    error = str(row.get("error") or "")
    kind = error.split(":", 1)[0].strip().lower().replace(" ", "_")
    known = ("upstream_unreachable", "connection_lost", "proxy_shut_down_while_the_call_was_in_flight")
    return kind if kind in known else "_OTHER"


def genai_attributes(
    row: Mapping[str, Any], *, request_model: str | None, response_model: str | None
) -> dict[str, Any]:
    """The span attributes of one call, by the GenAI semantic conventions (plus `sluice.*` extras).

    Never the prompt or the completion, never a credential. Values are OpenTelemetry attribute types
    (str, int, float, bool, or a sequence of str); absent values are left out rather than set to None.
    """
    host, _, port = str(row.get("host") or "").rpartition(":")
    if not host:
        host, port = port, ""
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": operation_name(row.get("api")),
        "gen_ai.provider.name": str(row.get("provider") or ""),
        "server.address": host,
        "sluice.api": str(row.get("api") or ""),
        "sluice.stream": bool(row.get("stream")),
    }
    if port.isdigit():
        attributes["server.port"] = int(port)
    optional: dict[str, Any] = {
        "gen_ai.request.model": request_model,
        "gen_ai.response.model": response_model,
        "gen_ai.response.id": row.get("response_id"),
        "http.response.status_code": row.get("status"),
        "sluice.client": row.get("client"),
        "sluice.cost_usd": row.get("cost_usd"),
        "sluice.cache_status": row.get("cache_status"),
        "sluice.ttft_ms": row.get("ttft_ms"),
        "gen_ai.usage.cache_read.input_tokens": row.get("cache_read_tokens"),
        "gen_ai.usage.output_tokens": row.get("output_tokens"),
        "gen_ai.usage.reasoning.output_tokens": row.get("reasoning_tokens"),
        "error.type": error_type(row),
    }
    attributes.update({name: _cut(value) for name, value in optional.items() if value is not None})
    writes = [row.get("cache_write_5m_tokens"), row.get("cache_write_1h_tokens")]
    if any(isinstance(value, int) for value in writes):
        attributes["gen_ai.usage.cache_creation.input_tokens"] = sum(v for v in writes if isinstance(v, int))
    inputs = [row.get("input_tokens"), row.get("cache_read_tokens"), *writes]
    if any(isinstance(value, int) for value in inputs):
        attributes["gen_ai.usage.input_tokens"] = sum(v for v in inputs if isinstance(v, int))
    if row.get("stop_reason"):
        attributes["gen_ai.response.finish_reasons"] = [_cut(str(row["stop_reason"]))]
    return attributes


def _cut(value: Any) -> Any:
    return value[:ATTRIBUTE_MAX_CHARS] if isinstance(value, str) else value


def span_name(row: Mapping[str, Any], request_model: str | None) -> str:
    """`{operation} {model}`, as the conventions name a client span (the operation alone without a model)."""
    operation = operation_name(row.get("api"))
    return f"{operation} {request_model[:LABEL_MAX_CHARS]}" if request_model else operation


DEFAULT_METRICS_PORT = 9464  # Prometheus's registered default port for OpenTelemetry/Prometheus exporters


def parse_listen_address(text: str) -> tuple[str, int]:
    """`127.0.0.1:9464`, `[::1]:9464`, `0.0.0.0:9464` or a bare port (`9464`, on loopback) → (host, port).

    Raises ValueError naming what is wrong. A bare port listens on loopback only: the metrics say who
    spends what, so exposing them beyond the machine is the operator's explicit choice."""
    value = text.strip()
    if value.isdigit():
        host, port_text = "127.0.0.1", value
    elif value.startswith("["):
        host, bracket, port_text = value[1:].partition("]:")
        if not bracket:
            raise ValueError(f"expected [IPv6]:port, got {text!r}")
    else:
        host, colon, port_text = value.rpartition(":")
        if not colon or not host or ":" in host:
            raise ValueError(f"expected host:port (such as 127.0.0.1:{DEFAULT_METRICS_PORT}), got {text!r}")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"the port must be a number from 1 to 65535, got {port_text!r}")
    return host, int(port_text)


def parse_otlp_endpoint(text: str) -> str:
    """An OTLP/HTTP collector's base URL (`http://collector:4318`) without a trailing slash; the signal
    paths (`/v1/traces`, `/v1/metrics`) are added to it. Raises ValueError for anything else."""
    value = text.strip().rstrip("/")
    scheme, sep, rest = value.partition("://")
    if scheme not in ("http", "https") or not sep or not rest or any(c in rest for c in " \t\r\n"):
        raise ValueError(f"expected an http:// or https:// URL such as http://127.0.0.1:4318, got {text!r}")
    if rest.split("/", 1)[0].rpartition("@")[1]:
        raise ValueError("the collector URL must not carry credentials; use OTEL_EXPORTER_OTLP_HEADERS")
    for suffix in ("/v1/traces", "/v1/metrics"):
        if value.endswith(suffix):
            value = value[: -len(suffix)]
    return value
