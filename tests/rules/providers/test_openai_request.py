from typing import Any

import pytest
from hypothesis import given, settings

from rules.providers import wire_format
from rules.providers.openai.request import is_usage_only_chunk, request_usage_in_stream
from rules.rewrite import inject_system_blocks
from tests.rules.nesting import nested
from tests.rules.request_bodies import POLICY

CHAT, RESPONSES = wire_format("chat"), wire_format("responses")


# --- inject_system_blocks: OpenAI ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("messages", "expected_roles"),
    [
        ([{"role": "user", "content": "hi"}], ["system*", "user"]),
        (
            [
                {"role": "system", "content": "a"},
                {"role": "system", "content": "b"},
                {"role": "user", "content": "c"},
            ],
            ["system", "system", "system*", "user"],
        ),
        (
            [{"role": "developer", "content": "a"}, {"role": "user", "content": "c"}],
            ["developer", "developer*", "user"],
        ),
        # Developer role used later on: the injected message follows the request's convention.
        (
            [{"role": "user", "content": "c"}, {"role": "developer", "content": "a"}],
            ["developer*", "user", "developer"],
        ),
    ],
)
def test_openai_chat_inserts_after_leading_instructions(
    messages: list[dict[str, Any]], expected_roles: list[str]
) -> None:
    body = {"model": "gpt-5", "messages": messages}
    result = inject_system_blocks(body, [POLICY], CHAT)
    roles = [
        message["role"] + ("*" if message.get("content") == POLICY.text else "")
        for message in result["messages"]
    ]
    assert roles == expected_roles


@pytest.mark.parametrize(
    "present",
    [
        {"role": "system", "content": POLICY.text},
        {"role": "developer", "content": [{"type": "text", "text": POLICY.text}]},
    ],
)
def test_openai_chat_is_idempotent(present: dict[str, Any]) -> None:
    body = {"model": "gpt-5", "messages": [present, {"role": "user", "content": "hi"}]}
    assert inject_system_blocks(body, [POLICY], CHAT) is body


@pytest.mark.parametrize(
    ("instructions", "expected"),
    [
        (None, POLICY.text),
        ("", POLICY.text),
        ("Be brief.", f"Be brief.\n\n{POLICY.text}"),
        (f"Be brief.\n\n{POLICY.text}", f"Be brief.\n\n{POLICY.text}"),
        (f"{POLICY.text}\n\nBe brief.", f"{POLICY.text}\n\nBe brief."),
        # Text merely containing the block is not the block.
        (f"Be brief. {POLICY.text}", f"Be brief. {POLICY.text}\n\n{POLICY.text}"),
    ],
)
def test_openai_responses_instructions(instructions: str | None, expected: str) -> None:
    body: dict[str, Any] = {"model": "gpt-5", "input": "hi"}
    if instructions is not None:
        body["instructions"] = instructions
    assert inject_system_blocks(body, [POLICY], RESPONSES)["instructions"] == expected


def test_openai_responses_non_string_instructions_untouched() -> None:
    body = {"model": "gpt-5", "instructions": [{"role": "developer"}]}
    assert inject_system_blocks(body, [POLICY], RESPONSES) is body


# --- OpenAI stream usage ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected_options", "client_asked"),
    [
        ({"stream": True}, {"include_usage": True}, False),
        ({"stream": True, "stream_options": None}, {"include_usage": True}, False),
        (
            {"stream": True, "stream_options": {"include_obfuscation": False}},
            {"include_obfuscation": False, "include_usage": True},
            False,
        ),
        ({"stream": True, "stream_options": {"include_usage": False}}, {"include_usage": True}, False),
        ({"stream": True, "stream_options": {"include_usage": True}}, {"include_usage": True}, True),
        ({"stream": False}, None, False),
        ({}, None, False),
    ],
)
def test_request_usage_in_stream(
    body: dict[str, Any], expected_options: dict[str, bool] | None, client_asked: bool
) -> None:
    result, asked = request_usage_in_stream(body)
    assert result.get("stream_options") == expected_options
    assert asked is client_asked


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ('{"id":"c","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}', True),
        (' {"choices": [], "usage": {"total_tokens": 4}}\n', True),
        ('{"choices":[{"index":0,"delta":{"content":"x"}}],"usage":null}', False),
        ('{"choices":[],"usage":null}', False),
        ('{"choices":[],"prompt_filter_results":[]}', False),  # Azure's first chunk
        ("[DONE]", False),
        ("{not json", False),
        ("", False),
    ],
)
def test_is_usage_only_chunk(data: str, expected: bool) -> None:
    assert is_usage_only_chunk(data) is expected


@settings(max_examples=40, deadline=None)
@given(value=nested())
def test_a_deeply_nested_stream_chunk_is_not_usage_only(value: str) -> None:
    assert is_usage_only_chunk(value) is False
