"""MemberMemo: large members a request repeats verbatim are parsed once and shared between calls."""

from __future__ import annotations

import json

from rules.config import Rules
from rules.rewrite import MemberMemo, RuleContext, apply_request_rules, parse_json, parse_object_with_spans

TOOLS = [
    {"name": f"tool_{i}", "description": "d" * 200, "input_schema": {"type": "object"}} for i in range(8)
]


def body(question: str, tools: list[dict[str, object]] = TOOLS) -> str:
    return json.dumps({"model": "m", "tools": tools, "messages": [{"role": "user", "content": question}]})


def test_a_repeated_large_member_is_parsed_once_and_shared() -> None:
    memo = MemberMemo()
    first, first_spans = parse_object_with_spans(body("one"), memo)  # type: ignore[misc]
    second, second_spans = parse_object_with_spans(body("two"), memo)  # type: ignore[misc]

    assert second["tools"] is first["tools"]  # the very object: not parsed again
    assert second["messages"] is not first["messages"]
    assert second == parse_json(body("two"))
    assert second_spans == first_spans | {"messages": second_spans["messages"]}


def test_a_changed_member_is_parsed_afresh() -> None:
    memo = MemberMemo()
    first, _ = parse_object_with_spans(body("one"), memo)  # type: ignore[misc]
    changed_tools = [*TOOLS[:-1], {**TOOLS[-1], "description": "changed"}]
    second, _ = parse_object_with_spans(body("one", changed_tools), memo)  # type: ignore[misc]

    assert second["tools"] is not first["tools"]
    assert second["tools"] == changed_tools


def test_small_members_and_other_members_are_not_remembered() -> None:
    memo = MemberMemo()
    small = [{"name": "t"}]
    first, _ = parse_object_with_spans(body("one", small), memo)  # type: ignore[misc]
    second, _ = parse_object_with_spans(body("one", small), memo)  # type: ignore[misc]
    assert second["tools"] is not first["tools"]
    assert second["messages"] is not first["messages"]


def test_a_remembered_prefix_does_not_hide_what_follows_it() -> None:
    memo = MemberMemo()
    parse_object_with_spans(body("one"), memo)
    tools = json.dumps(TOOLS)
    broken = body("one").replace(tools + ",", tools + "],", 1)  # the remembered text, then a stray bracket
    assert tools in broken
    assert parse_object_with_spans(broken, memo) is None  # the caller then reports the body as not JSON


def test_rules_give_the_same_bytes_with_and_without_the_memo() -> None:
    rules = Rules.model_validate({"max_tokens_default": 1000, "model_aliases": {"m": "claude-sonnet-4-6"}})
    plain = RuleContext(provider="anthropic", api="messages", host="api.anthropic.com", rules=rules)
    memo = MemberMemo()
    remembering = RuleContext(
        provider="anthropic", api="messages", host="api.anthropic.com", rules=rules, memo=memo
    )
    for question in ("one", "two", "three"):
        raw = body(question).encode()
        assert apply_request_rules(raw, remembering).body == apply_request_rules(raw, plain).body
