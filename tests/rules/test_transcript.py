"""The mitmweb view's generic part: every wire format's answers and requests go through its hooks and never
raise; each provider's own shapes are tested beside it (tests/rules/providers/test_*_transcript.py)."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules.providers import wire_format
from rules.transcript import Part, RequestOutline, is_event_stream, join_texts, outline_request, reassemble
from tests.rules.nesting import bodies, nested
from tests.rules.payloads import fixture

WIRES = ("messages", "chat", "responses", "count_tokens")


def kinds(parts: tuple[Part, ...]) -> list[tuple[str, str | None]]:
    return [(part.kind, part.name) for part in parts]


# --- captured provider payloads ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("api", "name", "streamed", "expected_kinds", "text"),
    [
        (
            "messages",
            "anthropic_messages_stream.sse",
            True,
            [("thinking", None), ("text", None), ("tool_call", "get_weather")],
            "Je vérifie la météo à Zürich pour vous 🌦️ — un instant (天気を確認します).",
        ),
        (
            "messages",
            "anthropic_stream_cache_websearch.sse",
            True,
            [
                ("text", None),
                ("tool_call", "web_search"),
                ("tool_result", "web_search_tool_result"),
                ("text", None),
            ],
            "I'll look up the latest release notes.Version 12 needs Python 3.12 or newer.",
        ),
        (
            "messages",
            "anthropic_message.json",
            False,
            [("thinking", None), ("text", None)],
            "They meet after 1.5 hours (90 minutes), 180 km from the first station.",
        ),
        (
            "chat",
            "openai_chat_stream_usage.sse",
            True,
            [("text", None)],
            'The integral of x² from 0 to 3 is 9 — see the "usage" note.',
        ),
        ("chat", "openai_chat_completion.json", False, [("text", None)], None),
        (
            "responses",
            "openai_responses_stream_completed.sse",
            True,
            [("thinking", None), ("text", None)],
            "Prime numbers below 20: 2, 3, 5, 7, 11, 13, 17, 19 — eight in all ✓",
        ),
        (
            "responses",
            "openai_response.json",
            False,
            [("thinking", None), ("tool_call", "web_search_call"), ("text", None)],
            "The ECB deposit facility rate is 2.00 %.",
        ),
    ],
)
def test_fixtures_reassemble(
    api: str, name: str, streamed: bool, expected_kinds: list[Any], text: str | None
) -> None:
    transcript = reassemble(wire_format(api), fixture(name))
    assert transcript.streamed is streamed
    assert kinds(transcript.parts) == expected_kinds
    if text is not None:
        assert join_texts(transcript.parts) == text
    assert transcript.reading.usage_seen


def test_usage_and_errors_come_from_the_usage_reader() -> None:
    transcript = reassemble(wire_format("messages"), fixture("anthropic_stream_overloaded.sse"))
    assert transcript.reading.error is not None and transcript.reading.error.startswith("overloaded_error")
    failed = reassemble(wire_format("responses"), fixture("openai_responses_stream_failed.sse"))
    assert failed.reading.error is not None and failed.reading.error.startswith("server_error")
    error = reassemble(wire_format("messages"), fixture("anthropic_error_overloaded.json"), status=529)
    assert error.parts == () and error.reading.error == "overloaded_error: Overloaded"


def test_a_wire_format_without_the_views_hooks_shows_its_usage_but_no_output_and_no_outline() -> None:
    bare = replace(wire_format("messages"), body_parts=None, stream_parts=None, outline=None)
    streamed = reassemble(bare, fixture("anthropic_messages_stream.sse"))
    assert streamed.parts == () and streamed.events == 20 and streamed.reading.usage_seen
    whole = reassemble(bare, fixture("anthropic_message.json"))
    assert whole.parts == () and whole.reading.usage_seen
    request = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert outline_request(bare, request) == RequestOutline()


# --- garbage ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"", b"event: message_start\ndata: {not json\n\n", b"data: [DONE]\n\n", b"\x00\xff"],
)
def test_garbage_never_raises(body: bytes) -> None:
    for api in WIRES:
        reassemble(wire_format(api), body, streamed=True)
        reassemble(wire_format(api), body, streamed=False)


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (b"event: ping\n", None, True),
        (b"\n\ndata: {}\n", None, True),
        (b'{"a": 1}', None, False),
        (b'{"a": 1}', "text/event-stream; charset=utf-8", True),
        (b"event: x", "application/json", False),
    ],
)
def test_is_event_stream(body: bytes, content_type: str | None, expected: bool) -> None:
    assert is_event_stream(body, content_type) is expected


# --- requests -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [{}, {"messages": "nope", "system": 3, "tools": [1]}, {"input": [None, 2]}])
def test_odd_requests_never_raise(body: dict[str, Any]) -> None:
    for api in WIRES:
        outline_request(wire_format(api), body)


# --- deeply nested JSON -----------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(value=nested(), api=st.sampled_from(["messages", "chat", "responses"]))
def test_a_deeply_nested_response_is_reassembled_never_raised(value: str, api: str) -> None:
    whole = '{"type":"message","content":[{"type":"tool_use","name":"t","input":' + value + "}]}"
    reassemble(wire_format(api), whole.encode(), streamed=False)
    records = [
        '{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","input":' + value + "}}",
        '{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":'
        + json.dumps(value)
        + "}}",
        '{"type":"response.output_item.added","output_index":0,"item":{"type":"function_call","x":'
        + value
        + "}}",
        '{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":'
        + json.dumps(value)
        + "}}]}}]}",
    ]
    stream = "".join(f"data: {record}\n\n" for record in records)
    reassemble(wire_format(api), stream.encode(), streamed=True)


@settings(max_examples=60, deadline=None)
@given(body=bodies(), api=st.sampled_from(["messages", "chat", "responses"]))
def test_a_deeply_nested_request_is_outlined_never_raised(body: str, api: str) -> None:
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return  # refused by the parser: never reaches the outline
    if isinstance(parsed, dict):
        outline_request(wire_format(api), parsed)
