"""OpenAI Chat Completions and Responses in the mitmweb view: choices and output items put back together,
a request laid out."""

from __future__ import annotations

import json
from typing import Any

from rules.providers import wire_format
from rules.transcript import Entry, outline_request, reassemble
from tests.rules.payloads import sse

CHAT = wire_format("chat")
RESPONSES = wire_format("responses")


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
    parts = reassemble(CHAT, body).parts
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
    parts = reassemble(RESPONSES, body).parts
    assert [(p.kind, p.text) for p in parts] == [
        ("tool_call", '{\n  "a": 1\n}'),
        ("thinking", "why"),
        ("text", "partial"),
    ]
    done = {"id": "msg_1", "type": "message", "content": [{"type": "output_text", "text": "final"}]}
    finished = body + sse(
        ("response.output_item.done", {"type": "response.output_item.done", "output_index": 2, "item": done})
    )
    assert reassemble(RESPONSES, finished).parts[-1].text == "final"


def test_an_openai_chat_request_puts_system_and_developer_messages_first() -> None:
    body = {
        "model": "gpt-5",
        "reasoning_effort": "low",
        "max_completion_tokens": 500,
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
    outline = outline_request(CHAT, body)
    shown = (("model", "gpt-5"), ("max_completion_tokens", "500"), ("reasoning_effort", "low"))
    assert outline.settings == shown  # in the order a person reads them, whatever the body's order
    assert [(e.name, e.text) for e in outline.tools] == [("lookup", "Look it up.")]
    assert [(e.path, e.text) for e in outline.system] == [("messages[0]", "Be brief.")]
    assert [(e.path, e.kind) for e in outline.messages] == [
        ("messages[1]", "text"),
        ("messages[2].tool_calls[0]", "tool_use"),
        ("messages[3]", "tool_result"),
    ]


def test_an_openai_responses_request_shows_instructions_and_input_items() -> None:
    body = {
        "model": "gpt-5",
        "reasoning": {"effort": "high"},
        "previous_response_id": "resp_1",
        "instructions": "Be kind.",
        "input": "hi",
    }
    outline = outline_request(RESPONSES, body)
    assert dict(outline.settings) == {
        "model": "gpt-5",
        "reasoning": '{"effort":"high"}',
        "previous_response_id": "resp_1",
    }
    assert outline.system == (Entry("instructions", "text", "Be kind.", "system"),)
    assert outline.messages == (Entry("input", "text", "hi", "user"),)
    items = outline_request(
        RESPONSES,
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
