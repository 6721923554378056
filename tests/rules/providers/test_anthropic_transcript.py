"""Anthropic Messages in the mitmweb view: content blocks put back together, a request laid out."""

from __future__ import annotations

import json

from rules.providers import wire_format
from rules.transcript import Entry, outline_request, reassemble
from tests.rules.payloads import fixture, sse

MESSAGES = wire_format("messages")


def test_an_anthropic_tool_call_is_its_name_and_the_joined_json_input() -> None:
    transcript = reassemble(MESSAGES, fixture("anthropic_messages_stream.sse"))
    call = transcript.parts[-1]
    assert call.call_id == "toolu_01T1x8fJ4kQ9vZ2mR7wN3pLb"
    assert json.loads(call.text) == {"location": "Zürich, CH", "unit": "celsius"}
    assert transcript.reading.stop_reason == "tool_use"


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
    [call] = reassemble(MESSAGES, whole).parts
    assert (call.kind, call.name, json.loads(call.text)) == ("tool_call", "Bash", {"command": "ls"})
    cut = whole[: whole.rindex(b"event:")]
    [partial] = reassemble(MESSAGES, cut).parts
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
    parts = reassemble(MESSAGES, body).parts
    assert [(p.kind, p.text) for p in parts] == [
        ("redacted_thinking", "(redacted by the provider)"),
        ("text", "hi"),
    ]


def test_count_tokens_has_no_parts_but_a_count() -> None:
    transcript = reassemble(wire_format("count_tokens"), fixture("anthropic_count_tokens.json"))
    assert transcript.parts == () and transcript.reading.counted_tokens is not None


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
    outline = outline_request(MESSAGES, body)
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
