from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import contentviews, http
from mitmproxy.test import taddons, tflow, tutils

from addons.contentview import LLMContentview, register, render_request, render_response
from addons.decoding import DEFAULT_DECODE_MAX, set_decode_max
from rules.providers import classify
from tests.rules.providers.bedrock.test_usage import converse_stream, invoke_stream

FIXTURES = Path(__file__).parent.parent / "fixtures"
REQUEST = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 1024,
    "system": [
        {"type": "text", "text": "You are Claude."},
        {"type": "text", "text": "Be kind.", "cache_control": {"type": "ephemeral"}},
    ],
    "messages": [{"role": "user", "content": "What is the weather in Zürich?"}],
    "tools": [{"name": "get_weather", "description": "Get the weather.", "input_schema": {}}],
}


@pytest.fixture(autouse=True)
def _registered() -> Iterator[None]:
    register()
    with taddons.context():  # prettify_message reads options
        yield


def flow(
    path: str = "/v1/messages",
    request: Any = REQUEST,
    response: bytes | None = None,
    content_type: str = "application/json",
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> http.HTTPFlow:
    content = request if isinstance(request, bytes) else json.dumps(request).encode()
    response_headers = http.Headers(content_type=content_type, **(headers or {}))
    return tflow.tflow(
        req=tutils.treq(method=b"POST", path=path.encode(), content=content),
        resp=tutils.tresp(status_code=status, content=response, headers=response_headers)
        if response is not None
        else False,
    )


def shown(message: http.Message, f: http.HTTPFlow) -> tuple[str | None, str]:
    result = contentviews.prettify_message(message, f)
    return result.view_name, result.text


def test_the_view_is_chosen_for_metered_calls_only() -> None:
    f = flow(response=(FIXTURES / "anthropic_message.json").read_bytes())
    assert shown(f.request, f)[0] == "LLM"
    assert shown(f.response, f)[0] == "LLM"  # type: ignore[arg-type]
    other = flow(path="/v1/models", response=b'{"data": []}')
    assert shown(other.request, other)[0] != "LLM"
    assert shown(other.response, other)[0] == "JSON"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("path", "fixture", "content_type", "expected"),
    [
        (
            "/v1/messages",
            "anthropic_messages_stream.sse",
            "text/event-stream",
            [
                "LLM response · anthropic messages · HTTP 200 · streamed (20 events)",
                "stop    tool_use",
                "━━ thinking ━━",
                "      Je vérifie la météo à Zürich pour vous 🌦️ — un instant (天気を確認します).",
                "━━ tool call: get_weather (toolu_01T1x8fJ4kQ9vZ2mR7wN3pLb) ━━",
                '        "location": "Zürich, CH",',
            ],
        ),
        (
            "/v1/chat/completions",
            "openai_chat_stream_usage.sse",
            "text/event-stream",
            [
                "LLM response · openai chat",
                '      The integral of x² from 0 to 3 is 9 — see the "usage" note.',
            ],
        ),
        (
            "/v1/responses",
            "openai_responses_stream_completed.sse",
            "text/event-stream",
            [
                "LLM response · openai responses",
                "      Prime numbers below 20: 2, 3, 5, 7, 11, 13, 17, 19 — eight in all ✓",
            ],
        ),
        (
            "/v1/messages",
            "anthropic_message.json",
            "application/json",
            [
                "whole body",
                "━━ text ━━",
                "      They meet after 1.5 hours (90 minutes), 180 km from the first station.",
            ],
        ),
    ],
)
def test_responses_show_the_reassembled_turn(
    path: str, fixture: str, content_type: str, expected: list[str]
) -> None:
    f = flow(path=path, response=(FIXTURES / fixture).read_bytes(), content_type=content_type)
    name, text = shown(f.response, f)  # type: ignore[arg-type]
    assert name == "LLM"
    for line in expected:
        assert line in text
    assert "usage   in " in text and " · $" in text


def test_a_response_shows_its_rate_limits_cache_verdict_and_error() -> None:
    f = flow(
        response=(FIXTURES / "anthropic_stream_overloaded.sse").read_bytes(),
        content_type="text/event-stream",
        headers={
            "anthropic-ratelimit-unified-5h-utilization": "0.42",
            "anthropic-ratelimit-unified-status": "allowed",
        },
    )
    f.metadata["sluice"] = {"cache": {"status": "miss", "note": "prefix changed at system[0]"}}
    text = shown(f.response, f)[1]  # type: ignore[arg-type]
    assert "limits  5h 42%" in text
    assert "cache   miss: prefix changed at system[0]" in text
    assert "error   overloaded_error" in text


def test_an_error_response_and_a_count() -> None:
    error = flow(response=(FIXTURES / "anthropic_error_overloaded.json").read_bytes(), status=529)
    assert "error   overloaded_error: Overloaded" in shown(error.response, error)[1]  # type: ignore[arg-type]
    count = flow(
        path="/v1/messages/count_tokens", response=(FIXTURES / "anthropic_count_tokens.json").read_bytes()
    )
    assert "input tokens (not billed)" in shown(count.response, count)[1]  # type: ignore[arg-type]


ADDED_BLOCK = {"op": "added", "path": "system[1]", "after": '{"type":"text","text":"Be kind."}'}


def request_lines(rules: list[str], changes: list[dict[str, str]]) -> list[str]:
    """The LLM view of the test request, with `rules` and `changes` kept on the flow as sluice keeps them."""
    f = flow()
    f.metadata["sluice"] = {"rules": rules, "changes": changes}
    return shown(f.request, f)[1].splitlines()


def test_a_request_marks_what_sluice_changed() -> None:
    removed = {
        "op": "removed",
        "path": "messages[0].content[0].cache_control",
        "before": '{"type":"ephemeral"}',
    }
    lines = request_lines(
        ["system_block:policy", "max_tokens"],
        [ADDED_BLOCK, {"op": "added", "path": "max_tokens", "after": "1024"}, removed],
    )
    assert "sluice changed this request: system_block:policy, max_tokens" in lines
    assert '  + system[1]: {"type":"text","text":"Be kind."}' in lines
    assert '  - messages[0].content[0].cache_control: {"type":"ephemeral"}' in lines
    assert "+ max_tokens  1024" in lines
    assert "  model       claude-sonnet-4-5" in lines
    assert "  system[0] · text" in lines
    assert "+ system[1] · text · [cache 5m]  ◀ added by sluice" in lines
    assert "      Be kind." in lines
    assert "  tools[0] · tool get_weather" in lines
    assert "~ messages[0].content · user · text  ◀ changed by sluice" in lines


def test_a_request_sluice_left_alone_says_so() -> None:
    f = flow()
    assert "sluice changed nothing in this request." in shown(f.request, f)[1]


@pytest.mark.parametrize(("body", "message"), [(b"not json", "request"), (b'{"a":1}', None)])
def test_unreadable_bodies_fall_back_to_another_view(body: bytes, message: str | None) -> None:
    f = flow(request=body, response=b"<html>bad gateway</html>", content_type="text/html", status=502)
    request_view = shown(f.request, f)[0]
    assert request_view in ("Raw", "LLM")
    assert shown(f.response, f)[0] != "LLM"  # type: ignore[arg-type]


def test_render_priority_needs_a_flow_and_data() -> None:
    from mitmproxy.contentviews import Metadata

    view = LLMContentview()
    assert view.render_priority(b"{}", Metadata()) < 0
    f = flow()
    assert view.render_priority(b"", Metadata(flow=f, http_message=f.request)) < 0
    assert view.render_priority(b"{}", Metadata(flow=f, http_message=f.request)) > 1


# --- bodies too big or too deep to show -------------------------------------------------------------------


def test_a_compressed_body_over_the_decode_cap_is_shown_raw_not_decoded() -> None:
    wire = gzip.compress(bytes(64 * 1024 * 1024))
    f = flow(response=b"{}", headers={"content-encoding": "gzip"})
    assert f.response is not None
    f.response.raw_content = wire
    set_decode_max(1024 * 1024)
    try:
        view, text = shown(f.response, f)
        result = contentviews.prettify_message(f.response, f)
    finally:
        set_decode_max(DEFAULT_DECODE_MAX)
    assert "cannot decode" in result.description
    assert view != "LLM" and len(text) < 4 * len(wire)  # the wire bytes, escaped, never 64 MiB of zeros


def test_a_compressed_body_within_the_cap_is_still_decoded_for_the_view() -> None:
    f = flow(response=b"{}", headers={"content-encoding": "gzip"})
    assert f.response is not None
    f.response.raw_content = gzip.compress((FIXTURES / "anthropic_message.json").read_bytes())
    assert shown(f.response, f)[0] == "LLM"


@pytest.mark.parametrize("opener", [b"[", b'{"a":'])
def test_a_request_nested_past_the_parser_limit_falls_back_to_another_view(opener: bytes) -> None:
    f = flow(request=b'{"model":"m","messages":' + opener * 100_000 + b"1")
    view, _ = shown(f.request, f)
    assert view != "LLM"
    with pytest.raises(ValueError, match="nests too deeply"):
        LLMContentview().prettify(f.request.content or b"", contentviews.make_metadata(f.request, f))


def test_a_client_block_whose_ttl_sluice_raised_is_marked_changed_not_added() -> None:
    raised = {"op": "added", "path": "system[0].cache_control.ttl", "after": '"1h"'}
    lines = request_lines(["system_block:policy", "cache_ttl_order"], [raised, ADDED_BLOCK])
    assert "~ system[0] · text  ◀ changed by sluice" in lines
    assert "+ system[1] · text · [cache 5m]  ◀ added by sluice" in lines


def test_the_view_names_who_served_the_call_and_prices_it_as_its_row_does() -> None:
    answer = (FIXTURES / "anthropic_message.json").read_bytes()
    plain = flow(response=answer)
    assert "LLM response · anthropic messages" in shown(plain.response, plain)[1]  # type: ignore[arg-type]

    cloud = flow(response=answer)
    cloud.metadata["sluice"] = {"provider": "anthropic", "billed_by": "anthropic", "region": "us-east-1"}
    text = shown(cloud.response, cloud)[1]  # type: ignore[arg-type]
    assert "LLM response · anthropic messages · region us-east-1" in text
    assert "LLM request · anthropic messages · region us-east-1" in shown(cloud.request, cloud)[1]
    assert " · $" in text

    # A biller that does not price this model: the view says so, as the row does, instead of a guess.
    gateway = flow(response=answer)
    gateway.metadata["sluice"] = {"provider": "groq", "billed_by": "groq", "region": None}
    text = shown(gateway.response, gateway)[1]  # type: ignore[arg-type]
    assert "LLM response · groq messages" in text and "cost unknown" in text


# --- Bedrock: event-stream frames, the cloud region -------------------------------------------------

BEDROCK_CONVERSE_PATH = "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/converse-stream"
BEDROCK_INVOKE_PATH = "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke-with-response-stream"


def test_a_converse_stream_is_shown_with_its_text_usage_and_region():
    endpoint = classify("POST", BEDROCK_CONVERSE_PATH)
    assert endpoint is not None
    shown = render_response(
        endpoint, converse_stream(), None, {}, "application/vnd.amazon.eventstream", "us-east-1"
    )
    assert shown.startswith(
        "LLM response · bedrock bedrock_converse · region us-east-1 · HTTP 200 · streamed (6 events)"
    )
    assert "Hello" in shown and "end_turn" in shown


def test_an_invoke_stream_is_shown_from_its_anthropic_events():
    endpoint = classify("POST", BEDROCK_INVOKE_PATH)
    assert endpoint is not None
    shown = render_response(
        endpoint, invoke_stream(), None, {}, "application/vnd.amazon.eventstream", "eu-west-1"
    )
    assert "bedrock bedrock_invoke · region eu-west-1" in shown and "HelloHello" in shown and "msg_1" in shown


def test_a_converse_request_is_laid_out():
    endpoint = classify("POST", BEDROCK_CONVERSE_PATH)
    assert endpoint is not None
    body = {
        "system": [{"text": "Be brief."}],
        "messages": [{"role": "user", "content": [{"text": "Say hello."}]}],
    }
    shown = render_request(endpoint, json.dumps(body).encode(), {}, "us-east-1")
    assert shown.startswith("LLM request · bedrock bedrock_converse · region us-east-1")
    assert "Be brief." in shown and "Say hello." in shown
