from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules.transcript import (
    Entry,
    Part,
    is_event_stream,
    join_texts,
    outline_request,
    reassemble,
)
from tests.rules.nesting import bodies, nested

FIXTURES = Path(__file__).parent.parent / "fixtures"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def sse(*records: tuple[str | None, Any]) -> bytes:
    out = []
    for name, payload in records:
        data = payload if isinstance(payload, str) else json.dumps(payload)
        out.append((f"event: {name}\n" if name else "") + f"data: {data}\n\n")
    return "".join(out).encode()


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
    transcript = reassemble(api, fixture(name))
    assert transcript.streamed is streamed
    assert kinds(transcript.parts) == expected_kinds
    if text is not None:
        assert join_texts(transcript.parts) == text
    assert transcript.reading.usage_seen


def test_an_anthropic_tool_call_is_its_name_and_the_joined_json_input() -> None:
    transcript = reassemble("messages", fixture("anthropic_messages_stream.sse"))
    call = transcript.parts[-1]
    assert call.call_id == "toolu_01T1x8fJ4kQ9vZ2mR7wN3pLb"
    assert json.loads(call.text) == {"location": "Zürich, CH", "unit": "celsius"}
    assert transcript.reading.stop_reason == "tool_use"


def test_usage_and_errors_come_from_the_usage_reader() -> None:
    transcript = reassemble("messages", fixture("anthropic_stream_overloaded.sse"))
    assert transcript.reading.error is not None and transcript.reading.error.startswith("overloaded_error")
    failed = reassemble("responses", fixture("openai_responses_stream_failed.sse"))
    assert failed.reading.error is not None and failed.reading.error.startswith("server_error")
    error = reassemble("messages", fixture("anthropic_error_overloaded.json"), status=529)
    assert error.parts == () and error.reading.error == "overloaded_error: Overloaded"


# --- streams cut into synthetic shapes ------------------------------------------------------------------


def test_anthropic_input_json_arrives_in_pieces_and_a_cut_one_is_shown_as_is() -> None:
    start = {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {}}
    whole = sse(
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": start}),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "input_json_delta", "partial_json": '{"com'},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "input_json_delta", "partial_json": 'mand": "ls"}'},
            },
        ),
    )
    [call] = reassemble("messages", whole).parts
    assert (call.kind, call.name, json.loads(call.text)) == ("tool_call", "Bash", {"command": "ls"})
    cut = whole[: whole.rindex(b"event:")]
    [partial] = reassemble("messages", cut).parts
    assert partial.text.startswith('{"com') and "incomplete JSON" in partial.text


def test_anthropic_blocks_are_ordered_by_index_and_redacted_thinking_is_named() -> None:
    body = sse(
        (
            "content_block_start",
            {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
        ),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "redacted_thinking", "data": "x"},
            },
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "hi"}},
        ),
    )
    parts = reassemble("messages", body).parts
    assert [(p.kind, p.text) for p in parts] == [
        ("redacted_thinking", "(redacted by the provider)"),
        ("text", "hi"),
    ]


def test_chat_tool_call_arguments_and_choices_are_put_back_together() -> None:
    def chunk(choices: list[dict[str, Any]]) -> tuple[None, dict[str, Any]]:
        return (None, {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-5", "choices": choices})

    call_start = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "lookup", "arguments": ""},
    }
    body = sse(
        chunk([{"index": 0, "delta": {"role": "assistant", "reasoning_content": "hmm"}}]),
        chunk([{"index": 0, "delta": {"tool_calls": [call_start]}}]),
        chunk([{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"q": '}}]}}]),
        chunk([{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '"x"}'}}]}}]),
        chunk([{"index": 1, "delta": {"content": "second choice"}}]),
        (None, "[DONE]"),
    )
    parts = reassemble("chat", body).parts
    assert [(p.choice, p.kind, p.name) for p in parts] == [
        (0, "thinking", None),
        (0, "tool_call", "lookup"),
        (1, "text", None),
    ]
    assert json.loads(parts[1].text) == {"q": "x"} and parts[1].call_id == "call_1"


def test_responses_deltas_fill_items_until_a_done_item_replaces_them() -> None:
    item = {"id": "fc_1", "type": "function_call", "call_id": "call_9", "name": "get", "arguments": ""}
    body = sse(
        (
            "response.output_item.added",
            {"type": "response.output_item.added", "output_index": 0, "item": item},
        ),
        (
            "response.function_call_arguments.delta",
            {"type": "response.function_call_arguments.delta", "output_index": 0, "delta": '{"a": 1}'},
        ),
        (
            "response.reasoning_summary_text.delta",
            {
                "type": "response.reasoning_summary_text.delta",
                "output_index": 1,
                "summary_index": 0,
                "delta": "why",
            },
        ),
        (
            "response.output_text.delta",
            {"type": "response.output_text.delta", "output_index": 2, "content_index": 0, "delta": "partial"},
        ),
    )
    parts = reassemble("responses", body).parts
    assert [(p.kind, p.text) for p in parts] == [
        ("tool_call", '{\n  "a": 1\n}'),
        ("thinking", "why"),
        ("text", "partial"),
    ]
    done = {"id": "msg_1", "type": "message", "content": [{"type": "output_text", "text": "final"}]}
    finished = body + sse(
        ("response.output_item.done", {"type": "response.output_item.done", "output_index": 2, "item": done})
    )
    assert reassemble("responses", finished).parts[-1].text == "final"


@pytest.mark.parametrize(
    "body",
    [b"", b"event: message_start\ndata: {not json\n\n", b"data: [DONE]\n\n", b"\x00\xff"],
)
def test_garbage_never_raises(body: bytes) -> None:
    for api in ("messages", "chat", "responses", "count_tokens"):
        reassemble(api, body, streamed=True)
        reassemble(api, body, streamed=False)


def test_count_tokens_has_no_parts_but_a_count() -> None:
    transcript = reassemble("count_tokens", fixture("anthropic_count_tokens.json"))
    assert transcript.parts == () and transcript.reading.counted_tokens is not None


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


def test_an_anthropic_request_is_laid_out_in_prompt_order_with_paths_and_breakpoints() -> None:
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "tools": [{"name": "Bash", "description": "Run a command.\nMore.", "input_schema": {}}],
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc"},
            {"type": "text", "text": "You are Claude.", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
        ],
        "messages": [
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "Bash", "input": {"command": "ls"}}],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": [{"type": "text", "text": "a.txt"}],
                    },
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "..."}},
                    {"type": "text", "text": "go on", "cache_control": {"type": "ephemeral"}},
                ],
            },
        ],
    }
    outline = outline_request("messages", body)
    assert dict(outline.settings) == {"model": "claude-sonnet-4-5", "max_tokens": "1024"}
    assert outline.tools == (Entry("tools[0]", "tool", "Run a command.", name="Bash"),)
    assert [(e.path, e.cache) for e in outline.system] == [("system[0]", None), ("system[1]", "1h")]
    assert [(e.path, e.role, e.kind, e.name, e.cache) for e in outline.messages] == [
        ("messages[0].content", "user", "text", None, None),
        ("messages[1].content[0]", "assistant", "tool_use", "Bash", None),
        ("messages[2].content[0]", "user", "tool_result", "t1", None),
        ("messages[2].content[1]", "user", "image", None, None),
        ("messages[2].content[2]", "user", "text", None, "5m"),
    ]
    assert json.loads(outline.messages[1].text) == {"command": "ls"}
    assert outline.messages[2].text == "a.txt"
    assert outline.messages[3].text == "[image: image/png]"


def test_an_openai_chat_request_puts_system_and_developer_messages_first() -> None:
    body = {
        "model": "gpt-5",
        "tools": [{"type": "function", "function": {"name": "lookup", "description": "Look it up."}}],
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "hello"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "found"},
        ],
    }
    outline = outline_request("chat", body)
    assert [(e.name, e.text) for e in outline.tools] == [("lookup", "Look it up.")]
    assert [(e.path, e.text) for e in outline.system] == [("messages[0]", "Be brief.")]
    assert [(e.path, e.kind) for e in outline.messages] == [
        ("messages[1]", "text"),
        ("messages[2].tool_calls[0]", "tool_use"),
        ("messages[3]", "tool_result"),
    ]


def test_an_openai_responses_request_shows_instructions_and_input_items() -> None:
    outline = outline_request("responses", {"model": "gpt-5", "instructions": "Be kind.", "input": "hi"})
    assert outline.system == (Entry("instructions", "text", "Be kind.", "system"),)
    assert outline.messages == (Entry("input", "text", "hi", "user"),)
    items = outline_request(
        "responses",
        {
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
                {"type": "function_call", "call_id": "c", "name": "f", "arguments": '{"x": 1}'},
                {"type": "function_call_output", "call_id": "c", "output": "ok"},
            ]
        },
    )
    assert [(e.path, e.kind, e.text) for e in items.messages] == [
        ("input[0]", "text", "hi"),
        ("input[1]", "tool_use", '{\n  "x": 1\n}'),
        ("input[2]", "tool_result", "ok"),
    ]


@pytest.mark.parametrize("body", [{}, {"messages": "nope", "system": 3, "tools": [1]}, {"input": [None, 2]}])
def test_odd_requests_never_raise(body: dict[str, Any]) -> None:
    for api in ("messages", "chat", "responses", "count_tokens"):
        outline_request(api, body)


# --- deeply nested JSON -----------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(value=nested(), api=st.sampled_from(["messages", "chat", "responses"]))
def test_a_deeply_nested_response_is_reassembled_never_raised(value: str, api: str) -> None:
    whole = '{"type":"message","content":[{"type":"tool_use","name":"t","input":' + value + "}]}"
    reassemble(api, whole.encode(), streamed=False)
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
    reassemble(api, stream.encode(), streamed=True)


@settings(max_examples=60, deadline=None)
@given(body=bodies(), api=st.sampled_from(["messages", "chat", "responses"]))
def test_a_deeply_nested_request_is_outlined_never_raised(body: str, api: str) -> None:
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return  # refused by the parser: never reaches the outline
    if isinstance(parsed, dict):
        outline_request(api, parsed)
