"""rules/ops.py: bounded labels, the GenAI attributes of a call, the option parsers."""

from __future__ import annotations

from typing import Any

import pytest

from rules.ops import (
    LabelFolder,
    error_type,
    genai_attributes,
    parse_listen_address,
    parse_otlp_endpoint,
    span_name,
    status_class,
    token_counts,
)

ROW: dict[str, Any] = {
    "host": "api.anthropic.com",
    "provider": "anthropic",
    "api": "messages",
    "model": "claude-haiku-4-5-20251001",
    "client": "alice",
    "status": 200,
    "error": None,
    "stream": 1,
    "response_id": "msg_01",
    "stop_reason": "end_turn",
    "input_tokens": 11,
    "cache_read_tokens": 100,
    "cache_write_5m_tokens": 20,
    "cache_write_1h_tokens": 0,
    "output_tokens": 7,
    "reasoning_tokens": None,
    "cost_usd": 0.0012,
    "duration_ms": 812.5,
    "ttft_ms": 120.0,
    "credential": "keys[0] env:ANTHROPIC_KEY_1",
}


def test_the_first_values_keep_their_series_and_later_ones_fold_into_other() -> None:
    folder = LabelFolder(2)
    assert [folder.fold(v) for v in ("a", "b", "c", "a", "d", "b")] == ["a", "b", "other", "a", "other", "b"]
    assert folder.kept == {"a", "b"}


@pytest.mark.parametrize("value", ["", "x" * 129, "evil\nname", "other", "a\x1b[31m"])
def test_values_no_one_chose_on_purpose_fold_without_taking_a_slot(value: str) -> None:
    folder = LabelFolder(1)
    assert folder.fold(value) == "other"
    assert folder.fold("real") == "real"


def test_a_missing_value_is_none_and_a_limit_of_zero_keeps_nothing() -> None:
    assert LabelFolder(5).fold(None) == "none"
    assert LabelFolder(0).fold("a") == "other"
    with pytest.raises(ValueError, match="negative"):
        LabelFolder(-1)


@pytest.mark.parametrize(
    ("status", "expected"),
    [(200, "2xx"), (429, "4xx"), (529, "5xx"), (None, "none"), (True, "none"), (99, "none")],
)
def test_status_class(status: object, expected: str) -> None:
    assert status_class(status) == expected


def test_each_token_is_counted_under_one_kind() -> None:
    assert token_counts(ROW) == [("input", 11), ("cache_read", 100), ("cache_write_5m", 20), ("output", 7)]
    assert token_counts({"input_tokens": True, "output_tokens": -3}) == []


def test_genai_attributes_follow_the_semantic_conventions() -> None:
    attributes = genai_attributes(ROW, request_model="claude-haiku-4-5", response_model=ROW["model"])

    assert attributes == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": "claude-haiku-4-5",
        "gen_ai.response.model": "claude-haiku-4-5-20251001",
        "gen_ai.response.id": "msg_01",
        "gen_ai.response.finish_reasons": ["end_turn"],
        "gen_ai.usage.input_tokens": 131,  # every input token, cached ones included
        "gen_ai.usage.cache_read.input_tokens": 100,
        "gen_ai.usage.cache_creation.input_tokens": 20,
        "gen_ai.usage.output_tokens": 7,
        "server.address": "api.anthropic.com",
        "http.response.status_code": 200,
        "sluice.api": "messages",
        "sluice.stream": True,
        "sluice.client": "alice",
        "sluice.cost_usd": 0.0012,
        "sluice.ttft_ms": 120.0,
    }
    assert not any("credential" in name for name in attributes)


def test_a_host_with_a_port_gives_server_port() -> None:
    attributes = genai_attributes(
        {**ROW, "host": "gateway.internal:8443"}, request_model=None, response_model=None
    )
    assert (attributes["server.address"], attributes["server.port"]) == ("gateway.internal", 8443)


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"status": 200}, None),
        ({"status": 429, "error": "rate_limit_error: slow down"}, "429"),
        ({"status": None, "error": "upstream unreachable: refused"}, "upstream_unreachable"),
        ({"status": None, "error": "connection lost: reset"}, "connection_lost"),
        ({"status": 200, "error": "overloaded_error: in stream"}, "_OTHER"),
    ],
)
def test_error_type_stays_low_cardinality(row: dict[str, Any], expected: str | None) -> None:
    assert error_type(row) == expected


def test_span_name_is_operation_and_model() -> None:
    assert span_name(ROW, "claude-haiku-4-5") == "chat claude-haiku-4-5"
    assert span_name({"api": "count_tokens"}, None) == "count_tokens"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("9464", ("127.0.0.1", 9464)),
        ("0.0.0.0:9100", ("0.0.0.0", 9100)),
        ("[::1]:9464", ("::1", 9464)),
        ("metrics.internal:80", ("metrics.internal", 80)),
    ],
)
def test_listen_addresses(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen_address(text) == expected


@pytest.mark.parametrize(
    "text", ["", ":9464", "localhost", "127.0.0.1:0", "127.0.0.1:99999", "::1:9464", "[::1]"]
)
def test_bad_listen_addresses_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_listen_address(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://collector:4318", "http://collector:4318"),
        ("http://collector:4318/", "http://collector:4318"),
        ("https://otel.example/v1/traces", "https://otel.example"),
        ("http://127.0.0.1:4318/prefix", "http://127.0.0.1:4318/prefix"),
    ],
)
def test_otlp_endpoints(text: str, expected: str) -> None:
    assert parse_otlp_endpoint(text) == expected


@pytest.mark.parametrize(
    "text", ["collector:4318", "grpc://collector:4317", "http://", "http://user:pw@host:4318"]
)
def test_bad_otlp_endpoints_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_otlp_endpoint(text)


def test_a_client_written_model_name_is_cut_in_attributes_and_span_names() -> None:
    huge = "m" * 100_000
    attributes = genai_attributes({**ROW, "model": huge}, request_model=huge, response_model=huge)
    assert len(attributes["gen_ai.request.model"]) == 512 and len(attributes["gen_ai.response.model"]) == 512
    assert len(span_name(ROW, huge)) == len("chat ") + 128
