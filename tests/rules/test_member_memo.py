"""MemberMemo: large members a request repeats verbatim are parsed once and shared between calls."""

from __future__ import annotations

import json

from rules.config import Rules, SystemBlock
from rules.providers import wire_format
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
    plain = RuleContext(wire=wire_format("messages"), host="api.anthropic.com", rules=rules)
    memo = MemberMemo()
    remembering = RuleContext(wire=wire_format("messages"), host="api.anthropic.com", rules=rules, memo=memo)
    for question in ("one", "two", "three"):
        raw = body(question).encode()
        assert apply_request_rules(raw, remembering).body == apply_request_rules(raw, plain).body


def message(index: int, chars: int = 400) -> dict[str, object]:
    return {
        "role": "user" if index % 2 else "assistant",
        "content": [{"type": "text", "text": f"{index} " * chars}],
    }


def conversation(turns: int, *, indent: int | None = None) -> str:
    return json.dumps({"model": "m", "messages": [message(i) for i in range(turns)]}, indent=indent)


def test_the_messages_of_earlier_turns_are_parsed_once_and_shared() -> None:
    memo = MemberMemo()
    first, _ = parse_object_with_spans(conversation(3), memo)  # type: ignore[misc]
    second, spans = parse_object_with_spans(conversation(5), memo)  # type: ignore[misc]

    assert all(second["messages"][i] is first["messages"][i] for i in range(3))
    assert second == parse_json(conversation(5))
    assert second["messages"] is not first["messages"]  # the list itself is this request's
    assert conversation(5)[slice(*spans["messages"])] == json.dumps(second["messages"])


def test_short_messages_are_parsed_every_time() -> None:
    memo = MemberMemo()
    text = json.dumps({"messages": [{"role": "user", "content": "hi"}]})
    first, _ = parse_object_with_spans(text, memo)  # type: ignore[misc]
    second, _ = parse_object_with_spans(text, memo)  # type: ignore[misc]
    assert second["messages"][0] is not first["messages"][0]


def test_messages_read_the_same_with_any_whitespace() -> None:
    memo = MemberMemo()
    for turns in (1, 2, 4):
        text = conversation(turns, indent=2)  # newlines and indentation between elements
        parsed, _ = parse_object_with_spans(text, memo)  # type: ignore[misc]
        assert parsed == parse_json(text)
    assert parse_object_with_spans(json.dumps({"messages": []}), memo) == (
        {"messages": []},
        {"messages": (13, 15)},
    )
    assert parse_object_with_spans('{"messages": [ ]}', memo) == ({"messages": []}, {"messages": (13, 16)})


def test_malformed_message_lists_are_not_read_with_or_without_a_memory() -> None:
    memo = MemberMemo()
    parse_object_with_spans(conversation(2), memo)
    good = json.dumps([message(0), message(1)])
    for broken in (
        good[:-1] + ",]",  # a trailing comma
        good[:-1] + " " + good[1:],  # two elements without a comma between them
        good[:-1],  # never closed
        good + "]",  # a remembered element list, then a stray bracket
    ):
        text = '{"model": "m", "messages": ' + broken + "}"
        assert parse_object_with_spans(text, memo) is None
        rules = Rules.model_validate({"max_tokens_default": 1000})
        context = RuleContext(wire=wire_format("messages"), host="h", rules=rules, memo=memo)
        assert apply_request_rules(text.encode(), context).note == "body is not JSON"


def test_remembered_messages_stay_within_their_character_budget() -> None:
    memo = MemberMemo()
    memo.ELEMENT_CHARS_MAX = 10_000  # type: ignore[misc]
    for turns in range(1, 40):
        parse_object_with_spans(conversation(turns), memo)
        assert memo._element_chars <= memo.ELEMENT_CHARS_MAX
        assert memo._element_chars == sum(len(raw) for group in memo._elements.values() for raw, _ in group)
    latest, _ = parse_object_with_spans(conversation(40), memo)  # type: ignore[misc]
    assert latest == parse_json(conversation(40))


def test_rules_give_the_same_bytes_over_a_growing_conversation_with_and_without_the_memo() -> None:
    rules = Rules.model_validate(
        {"cache_control_max": 2, "model_aliases": {"m": "claude-sonnet-4-6"}, "max_tokens_default": 10}
    )
    plain = RuleContext(wire=wire_format("messages"), host="api.anthropic.com", rules=rules)
    remembering = RuleContext(
        wire=wire_format("messages"), host="api.anthropic.com", rules=rules, memo=MemberMemo()
    )
    messages: list[dict[str, object]] = []
    for turn in range(6):
        for earlier in messages:
            for block in earlier["content"]:  # type: ignore[attr-defined]
                block.pop("cache_control", None)  # the client moves its breakpoint to the newest message
        messages.append(message(turn))
        messages[-1]["content"][0]["cache_control"] = {"type": "ephemeral"}  # type: ignore[index]
        if turn % 2:
            messages[0]["content"][0]["cache_control"] = {"type": "ephemeral"}  # type: ignore[index]
        raw = json.dumps(
            {
                "model": "m",
                "system": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}],
                "messages": messages,
            }
        ).encode()
        assert apply_request_rules(raw, remembering).body == apply_request_rules(raw, plain).body


def test_a_message_carrying_a_breakpoint_is_not_remembered() -> None:
    memo = MemberMemo()
    marked = message(1)
    marked["content"][0]["cache_control"] = {"type": "ephemeral"}  # type: ignore[index]
    text = json.dumps({"messages": [message(0), marked]})
    first, _ = parse_object_with_spans(text, memo)  # type: ignore[misc]
    second, _ = parse_object_with_spans(text, memo)  # type: ignore[misc]
    assert second["messages"][0] is first["messages"][0]
    assert second["messages"][1] is not first["messages"][1]  # the client moves its marker on next turn
    assert second == parse_json(text)


def test_the_operators_system_block_is_one_object_that_no_rule_changes() -> None:
    block = SystemBlock(name="policy", text="Be careful.", cache="5m")
    raw = json.dumps({"model": "m", "system": [{"type": "text", "text": "s"}]}).encode()

    def ours(cap: int) -> dict[str, object]:
        rules = Rules(system_blocks=[block], cache_control_max=cap)
        context = RuleContext(wire=wire_format("messages"), host="api.anthropic.com", rules=rules)
        result = apply_request_rules(raw, context)
        assert result.rewritten is not None
        return result.rewritten["system"][-1]  # type: ignore[no-any-return]

    assert ours(4) is ours(4)  # shared between calls: its prompt-cache digest is kept
    assert ours(0) == {"type": "text", "text": "Be careful."}  # a cap of none drops our marker too...
    assert ours(4)["cache_control"] == {"type": "ephemeral"}  # ...on a copy: the shared block keeps it
