"""Claude on Vertex AI's module: its hosts and regions, its paths and model, the Anthropic hooks it reuses,
how it writes the token, its envelope, how its answers move a credential in the pool, its price."""

from __future__ import annotations

import json

import pytest

from rules.config import Rules, SystemBlock
from rules.provider_answers import judge_answer, read_error
from rules.providers import (
    anthropic,
    classify,
    host_region,
    provider,
    provider_for_host,
    served_path,
    wire_format,
)
from rules.providers.vertex import path_model, regional_host, write_credential
from rules.rewrite import RuleContext, apply_request_rules
from rules.usage import StreamReader, read_response_body
from state.pricing import price_call

BASE = "/v1/projects/my-project/locations/us-east5/publishers/anthropic/models"
VERTEX = provider("vertex")
RAW = wire_format("raw_predict")


@pytest.mark.parametrize(
    ("host", "region"),
    [
        ("us-east5-aiplatform.googleapis.com", "us-east5"),
        ("europe-west1-aiplatform.googleapis.com", "europe-west1"),
        ("asia-southeast1-aiplatform.googleapis.com", "asia-southeast1"),
        ("aiplatform.googleapis.com", "global"),
        ("generativelanguage.googleapis.com", None),
        ("us-east5-aiplatform.googleapis.com.attacker.example", None),
        ("evil.us-east5-aiplatform.googleapis.com", None),
        ("-aiplatform.googleapis.com", None),
    ],
)
def test_regional_hosts_are_vertex_and_name_their_region(host: str, region: str | None) -> None:
    assert regional_host(host) == region
    assert host_region(host) == region
    assert (provider_for_host(host) is VERTEX) is (region is not None)


@pytest.mark.parametrize(
    ("path", "api", "model"),
    [
        (f"{BASE}/claude-sonnet-4-5@20250929:rawPredict", "raw_predict", "claude-sonnet-4-5@20250929"),
        (f"{BASE}/claude-haiku-4-5@20251001:streamRawPredict", "raw_predict", "claude-haiku-4-5@20251001"),
        (f"{BASE}/count-tokens:rawPredict", "raw_predict_count_tokens", None),
        # Spelt another way, the same endpoint: matched on the path Vertex serves.
        (f"{BASE}/claude-sonnet-4-5%4020250929%3ArawPredict", "raw_predict", "claude-sonnet-4-5@20250929"),
    ],
)
def test_the_endpoint_and_model_are_read_from_the_path(path: str, api: str, model: str | None) -> None:
    endpoint = classify("POST", path)
    assert endpoint is not None and (endpoint.provider, endpoint.api) == ("vertex", api)
    assert path_model(served_path(path)) == model


def test_a_get_or_another_method_is_not_a_call() -> None:
    assert classify("GET", f"{BASE}/claude-sonnet-4-5@20250929:rawPredict") is None
    assert classify("POST", f"{BASE}/claude-sonnet-4-5@20250929:predict") is None


def test_the_anthropic_hooks_are_reused_not_copied() -> None:
    raw, messages = wire_format("raw_predict"), anthropic.MESSAGES
    for hook in ("read_body", "stream_events", "inject_system", "mark_cache", "prompt_shape", "stream_parts"):
        assert getattr(raw, hook) is getattr(messages, hook), hook
    # The model is in the path: a body rule cannot rename it.
    assert "alias" not in raw.rule_set and "system" in raw.rule_set
    assert wire_format("raw_predict_count_tokens").billed is False


def test_a_body_without_model_gets_the_operators_system_block() -> None:
    rules = Rules(system_blocks=[SystemBlock(name="house", text="Be brief.")])
    context = RuleContext(wire=RAW, host="us-east5-aiplatform.googleapis.com", rules=rules)
    body = {
        "anthropic_version": "vertex-2023-10-16",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": "x"}],
    }
    raw = json.dumps(body).encode()
    result = apply_request_rules(raw, context)
    assert result.body is not None and result.applied == ["system_block:house"]
    sent = json.loads(result.body)
    assert sent["system"][0]["text"] == "Be brief." and "model" not in sent


def test_usage_is_read_streamed_and_not_like_anthropics() -> None:
    usage = {
        "input_tokens": 7,
        "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 20,
        "output_tokens": 5,
    }
    reading = read_response_body(RAW, json.dumps({"type": "message", "usage": usage}).encode(), 200)
    got = reading.usage
    assert (got.input_tokens, got.cache_read_tokens, got.cache_write_5m_tokens, got.output_tokens) == (
        7,
        100,
        20,
        5,
    )
    reader = StreamReader(RAW)
    start = {"type": "message_start", "message": {"usage": {"input_tokens": 7, "output_tokens": 1}}}
    reader.feed(b"event: message_start\ndata: " + json.dumps(start).encode() + b"\n\n")
    reader.feed(b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":5}}\n\n')
    reader.feed(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
    reading = reader.finish()
    assert (reading.usage.input_tokens, reading.usage.output_tokens, reading.complete) == (7, 5, True)


def test_the_token_is_written_as_a_bearer_and_no_other_key_header_goes_on() -> None:
    changes = write_credential({"x-api-key": "k", "x-goog-api-key": "g"}, "ya29.real", "oauth")
    assert changes == {b"authorization": b"Bearer ya29.real", b"x-goog-api-key": None, b"x-api-key": None}


def test_sluices_own_answers_are_in_googles_envelope() -> None:
    error = json.loads(VERTEX.error_body(429, "sluice: cooling", None))
    assert error == {"error": {"code": 429, "message": "sluice: cooling", "status": "RESOURCE_EXHAUSTED"}}
    assert VERTEX.sse_error_event(503, "x").startswith(b"data: {")


def judge(status: int, body: dict[str, object], kind: str = "oauth") -> str:
    error = read_error(json.dumps(body).encode())
    return judge_answer(VERTEX, status, {}, error, kind, 0.0).action  # type: ignore[arg-type]


def google(status: int, name: str, message: str = "m", reason: str | None = None) -> dict[str, object]:
    error: dict[str, object] = {"code": status, "message": message, "status": name}
    if reason:
        error["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason}]
    return {"error": error}


def test_quota_overload_and_refusals_move_the_credential_as_they_should() -> None:
    assert (
        judge(429, google(429, "RESOURCE_EXHAUSTED", "Quota exceeded for aiplatform.googleapis.com/..."))
        == "cool"
    )
    assert judge(503, google(503, "UNAVAILABLE")) == "overloaded"
    assert judge(401, google(401, "UNAUTHENTICATED")) == "reauth"  # a minted token refused: mint again
    assert judge(403, google(403, "PERMISSION_DENIED", reason="SERVICE_DISABLED")) == "disable"
    assert judge(403, google(403, "PERMISSION_DENIED", reason="BILLING_DISABLED")) == "disable"
    # A model the project may not use is the request's fault, not the credential's.
    assert judge(403, google(403, "PERMISSION_DENIED", "Permission denied on resource")) == "none"
    assert judge(400, google(400, "INVALID_ARGUMENT")) == "none"


def test_claude_on_vertex_is_priced_as_google_bills_it() -> None:
    priced = price_call(VERTEX.pricing_id, "claude-sonnet-4-5@20250929", input_tokens=1000, output_tokens=100)
    assert priced.cost_usd == pytest.approx((1000 * 3 + 100 * 15) / 1e6)
