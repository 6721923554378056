"""The per-flow call record: what sluice learns about one provider call while it is in flight.

Kept in the addon's own table keyed by flow id, never in `flow.metadata` (which mitmproxy saves with `-w`
and shows in mitmweb). Turned into one `calls` row when the call ends, whichever way it ends.

Created in one place: the core's `request` hook (addons/core.py `new_call`), before any other part runs;
every other part only reads it (`core.calls.get(flow.id)`). Each field then has one part that writes it,
named in `WRITERS` below (tests/addons/test_calls.py reads addons/ and fails on a write not listed there).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from addons.decoding import StreamDecoder
from rules.estimate import BYTES_PER_TOKEN
from rules.providers import wire_format
from rules.usage import Reading, StreamReader, Usage
from state.pricing import Priced, price_as, price_call
from state.writer import CallRecord


@dataclass(frozen=True, slots=True)
class Writer:
    """Who writes a field of `Call` after the core created the record: the addons/ modules, and in which
    hooks. More than one module only for a field that says why it is shared."""

    parts: tuple[str, ...]
    hooks: str
    shared: str = ""


# What the core sets when it creates the record (addons/core.py `new_call`, `request`) and nobody changes:
# flow_id, method, path, api, started, session_id, request_headers. Every other write:
WRITERS: dict[str, Writer] = {
    # request side
    "host": Writer(
        ("core",), "request: `repoint`, for confine and sandbox re-pointing a transparent request"
    ),
    "provider": Writer(("core",), "request: `bill`, again at `repoint` (who bills depends on the host)"),
    "billed_by": Writer(("core",), "request: `bill`, again at `repoint`"),
    "region": Writer(("core",), "request: `bill`, again at `repoint`"),
    "client": Writer(("gate",), "request"),
    "user_id": Writer(("gate",), "request"),
    "credential": Writer(("credentials",), "request: the pool entry it swapped in (was: the presented key)"),
    "request_read": Writer(("rewrite",), "request"),
    "request_json_before": Writer(("rewrite",), "request; responseheaders (let go)"),
    "request_json": Writer(
        ("rewrite",), "request; responseheaders (let go, unless ops keeps it: `core.keeps_request_json`)"
    ),
    "client_asked_usage": Writer(("rewrite",), "request"),
    "request_model": Writer(
        ("rewrite", "meter"),
        "request",
        "the rewrite reads the body it rules on (and the budget prices what it read, before the meter); the "
        "meter reads it only where the rewrite could not (compressed, past the cap), for the row",
    ),
    "stream": Writer(
        ("rewrite", "meter"),
        "request; responseheaders",
        "as for request_model on the request side; then the answer's own word (an event stream), which the "
        "meter reads in responseheaders",
    ),
    "price_unknown_as": Writer(("budget",), "request"),
    "budget_hold": Writer(("budget",), "request"),
    "rate_held": Writer(("budget",), "request"),
    "stream_budget": Writer(("budget",), "request"),
    "request_bytes": Writer(("meter",), "request"),
    "answered_locally": Writer(
        ("core",),
        "request: `answer`/`answered`, for the part that answers (confine, sandbox, gate, budget, "
        "credentials, and the chain failing closed); at creation, for an answer given before sluice's parts",
    ),
    "rules_applied": Writer(
        ("rewrite", "headers"),
        "request; responseheaders; response",
        "appended to by each part that applies a rule to the call: the body's rules, the header allow-lists",
    ),
    "notes": Writer(
        ("core", "chain", "budget", "echo", "meter", "rewrite", "stream_end"),
        "any",
        "appended to (never rewritten) by every part with something to say on the row, and by the chain for "
        "a part that failed",
    ),
    # response side: the meter reads the answer (the reader and decoder it made are driven by it alone,
    # except that the watchdog feeds the reader the error event it ends an idle stream with)
    "headers_at": Writer(("meter",), "responseheaders"),
    "reader": Writer(("meter",), "responseheaders; response; error"),
    "decoder": Writer(("meter",), "responseheaders"),
    "body_copy": Writer(("meter",), "responseheaders; the stream's tee"),
    "response_bytes": Writer(("meter",), "the stream's tee; response"),
    "last_byte_at": Writer(("meter",), "the stream's tee"),
    "first_output_at": Writer(("meter",), "the stream's tee"),
    "final_reading": Writer(("meter",), "the stream's tee"),
    "finished": Writer(("meter",), "response; error; done"),
    "ended_by": Writer(
        ("stream_end",),
        "when the watchdog (an idle upstream) or the meter (a budget reached mid-stream) ends a stream",
    ),
}


@dataclass(slots=True)
class Call:
    flow_id: str
    host: str
    method: str
    path: str
    provider: str  # who serves and bills the call (the row's `provider`): `billed_by`, else the wire's
    api: str  # the wire format (rules/providers), whose provider's envelope sluice answers in
    started: float
    billed_by: str | None = None  # who bills it, when the host says (state/pricing.py `billing_provider`)
    region: str | None = None  # the cloud region its host names (rules/providers `host_region`)
    client: str | None = None
    user_id: str | None = None
    credential: str = "none"
    session_id: str | None = None
    # The client's request headers a part reads (addons/core.py `read_request_headers`), first value by
    # lower-cased name, as they arrived (before any rule).
    request_headers: dict[str, str] = field(default_factory=dict)
    request_model: str | None = None
    request_read: bool = False  # the request body was parsed (by the rewrite step) already
    # The JSON body as the client sent it and as it went upstream (rules/rewrite.py's objects, shared).
    request_json_before: dict[str, Any] | None = None
    request_json: dict[str, Any] | None = None
    client_asked_usage: bool = True
    budget_hold: float | None = None  # USD reserved for this call, when its client has a budget
    rate_held: bool = False  # the call counts against its client's (or team's) rate limits (state/rates.py)
    # USD its stream may spend, when a budget enforced mid-stream admitted it with only what was left.
    stream_budget: float | None = None
    # The model this budgeted call is priced as if its own has no price (`budget_price_unknown_models_as`).
    price_unknown_as: str | None = None
    stream: bool = False
    request_bytes: int = 0
    rules_applied: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    answered_locally: bool = False
    # response side
    reader: StreamReader | None = None
    final_reading: Reading | None = None  # what the parser had read when it was stopped
    decoder: StreamDecoder | None = None
    headers_at: float | None = None
    ended_by: str | None = None  # why sluice ended the call itself (idle timeout)
    last_byte_at: float | None = None  # time.monotonic() of the last response chunk (idle watchdog)
    response_bytes: int = 0
    first_output_at: float | None = None
    body_copy: bytearray | None = None
    finished: bool = False


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="microseconds")


def price_usage(
    provider: str | None, model: str | None, usage: Usage, unknown_model_as: str | None = None
) -> Priced:
    """The price of what a response reported, at today's prices (state/pricing.py). Usage the provider
    reported absurdly (rules/usage.py's `suspect`) is not priced at all: a cost from the counts that were
    believable would be too low, one from the rest absurd. A model with no price is priced as
    `unknown_model_as` when given (a budgeted call, `budget_price_unknown_models_as`), with a note."""
    if usage.suspect:
        return Priced(None, f"suspect usage: {usage.suspect}; not priced")

    def price(name: str | None) -> Priced:
        return price_call(
            provider,
            name,
            input_tokens=usage.input_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_5m_tokens=usage.cache_write_5m_tokens,
            cache_write_1h_tokens=usage.cache_write_1h_tokens,
            output_tokens=usage.output_tokens,
            web_search_requests=usage.web_search_requests,
            service_tier=usage.service_tier,
            speed=usage.speed,
        )

    return price_as(price(model), unknown_model_as, price)


def streamed_so_far(call: Call, reading: Reading) -> tuple[Reading, float | None]:
    """A stream's reading so far with its output counted from the text it carried (about BYTES_PER_TOKEN
    characters a token) where that is more than the provider reported yet, and that reading's cost."""
    counted = -(-reading.output_chars // BYTES_PER_TOKEN)
    if counted > (reading.usage.output_tokens or 0):
        reading = replace(reading, usage=replace(reading.usage, output_tokens=counted), usage_seen=True)
    priced = price_usage(
        call.billed_by, reading.model or call.request_model, reading.usage, call.price_unknown_as
    )
    return reading, priced.cost_usd


def _ms(start: float, end: float | None) -> float | None:
    return None if end is None else round((end - start) * 1000, 3)


def build_record(
    call: Call,
    reading: Reading,
    *,
    status: int | None,
    error: str | None,
    request_id: str | None,
    rate_limits: list[tuple[str, str]],
    headers_at: float | None,
    ended: float,
    budget_without_usage: str = "refund",
) -> CallRecord:
    usage = reading.usage
    model = reading.model or call.request_model
    if call.answered_locally:
        # The headers are sluice's (a refusal's own rate-limit headers) or an old answer's, never what the
        # provider says of a credential now: stored as a reading they would be one (a client over its own
        # limit showing its credential at 0 requests left).
        rate_limits = []
    if not wire_format(call.api).billed:
        cost, cost_note = (0.0, f"{call.api} is not billed")
    elif call.answered_locally:
        cost, cost_note = (0.0, "answered by sluice; upstream not contacted")
    else:
        priced = price_usage(call.billed_by, model, usage, call.price_unknown_as)
        cost, cost_note = priced.cost_usd, priced.note
    ttft_at = call.first_output_at if call.stream else headers_at
    row: dict[str, Any] = {
        "id": call.flow_id,
        "started_at": iso(call.started),
        "client": call.client,
        "host": call.host,
        "method": call.method,
        "path": call.path,
        "provider": call.provider,
        "api": call.api,
        "model": model,
        "stream": int(call.stream),
        "status": status,
        "error": call.ended_by or error or reading.error,
        "request_id": request_id,
        "response_id": reading.response_id,
        "stop_reason": reading.stop_reason,
        "input_tokens": usage.input_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_5m_tokens": usage.cache_write_5m_tokens,
        "cache_write_1h_tokens": usage.cache_write_1h_tokens,
        "output_tokens": usage.output_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
        "web_search_requests": usage.web_search_requests,
        "counted_tokens": reading.counted_tokens,
        "service_tier": usage.service_tier,
        "speed": usage.speed,
        "cost_usd": cost,
        "cost_note": cost_note,
        "duration_ms": _ms(call.started, ended),
        "ttft_ms": _ms(call.started, ttft_at),
        "credential": call.credential,
        "request_bytes": call.request_bytes,
        "response_bytes": call.response_bytes,
        "rules_applied": json.dumps(call.rules_applied + [f"note:{n}" for n in call.notes]) or None,
        "rate_limits": json.dumps(dict(rate_limits)) if rate_limits else None,
        "session_id": call.session_id,
        "region": call.region,
    }
    if row["rules_applied"] == "[]":
        row["rules_applied"] = None
    return CallRecord(
        row=row,
        rate_limits=rate_limits,
        host=call.host,
        credential=call.credential,
        observed_at=iso(ended),
        budget=_settlement(call, reading, cost, status, budget_without_usage),
        rate=_rate_used(call, reading) if call.rate_held else None,
    )


def _rate_used(call: Call, reading: Reading) -> tuple[int | None, int | None]:
    """The tokens a call counts against per-minute limits, as the providers count them: input it was billed
    for as new (uncached input and cache writes; reads do not count) and output. None where no usage was
    seen, or none that can be believed (suspect usage is stored as None): its estimate at admission stands.
    A call sluice answered itself after admitting it (no credential free, say) never reached the provider
    and used none: it still counts as a request."""
    if call.answered_locally:
        return (0, 0)
    if not reading.usage_seen:
        return (None, None)
    usage = reading.usage
    written = (usage.cache_write_5m_tokens or 0) + (usage.cache_write_1h_tokens or 0)
    new_input = None if usage.input_tokens is None else usage.input_tokens + written
    return (new_input, usage.output_tokens)


def _settlement(
    call: Call, reading: Reading, cost: float | None, status: int | None, without_usage: str
) -> tuple[str, float] | None:
    """What the call's budget hold becomes: its actual cost, or refunded when nothing was used.

    Usage seen but no cost (a model with no price, suspect counts): the hold settles at its estimate, the
    most the call could have cost, never at nothing.
    """
    if call.budget_hold is None:
        return None
    if reading.usage_seen:
        return ("settled", call.budget_hold if cost is None else cost)
    if without_usage == "charge_estimate" and call.stream and status == 200 and not call.answered_locally:
        return ("settled", call.budget_hold)
    return ("refunded", 0.0)
