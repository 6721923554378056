from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings

from rules.json_diff import Change, compact, diff_json, path_is_within
from tests.rules.nesting import bodies

SYSTEM = [
    {"type": "text", "text": "x-anthropic-billing-header: cc"},
    {"type": "text", "text": "You are Claude."},
]


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        ({"a": 1}, {"a": 1}, []),
        ({"a": 1}, {"a": 2}, [Change("changed", "a", "1", "2")]),
        ({"a": 1}, {"a": True}, [Change("changed", "a", "1", "true")]),  # JSON types differ
        ({"a": 1}, {"a": 1.0}, [Change("changed", "a", "1", "1.0")]),
        ({}, {"max_tokens": 4096}, [Change("added", "max_tokens", after="4096")]),
        (
            {"metadata": {}},
            {"metadata": {"user_id": "u"}},
            [Change("added", "metadata.user_id", after='"u"')],
        ),
        ({"stream": True, "x": 1}, {"stream": True}, [Change("removed", "x", before="1")]),
        # A block inserted after the billing block is one addition, not every later block changed.
        (
            {"system": SYSTEM},
            {"system": [SYSTEM[0], {"type": "text", "text": "policy"}, SYSTEM[1]]},
            [Change("added", "system[1]", after='{"type":"text","text":"policy"}')],
        ),
        # An edited item in place: the change inside it, at the after-document's position.
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}}],
                    }
                ]
            },
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]}]},
            [Change("removed", "messages[0].content[0].cache_control", before='{"type":"ephemeral"}')],
        ),
        ([1, 2, 3], [1, 3], [Change("removed", "[1]", before="2")]),
        ("a", ["a"], [Change("changed", "", '"a"', '["a"]')]),
    ],
)
def test_diff_json(before: Any, after: Any, expected: list[Change]) -> None:
    untouched = copy.deepcopy((before, after))
    assert diff_json(before, after) == expected
    assert (before, after) == untouched


def test_values_are_cut_and_changes_are_capped() -> None:
    [change] = diff_json({}, {"text": "x" * 2_000})
    assert change.after is not None and change.after.endswith("(2,002 characters)")
    assert len(diff_json({}, {str(n): n for n in range(500)}, limit=10)) == 10


def test_a_change_round_trips_through_plain_strings() -> None:
    for change in diff_json({"a": 1, "b": 2}, {"a": 3, "c": 4}):
        record = change.to_dict()
        assert all(isinstance(value, str) for value in record.values())
        assert Change.from_dict(record) == change


@pytest.mark.parametrize("record", [None, "x", {}, {"op": "moved", "path": "a"}, {"op": "added", "path": 3}])
def test_from_dict_ignores_what_is_not_a_change(record: object) -> None:
    assert Change.from_dict(record) is None


@pytest.mark.parametrize(
    ("path", "ancestor", "within"),
    [
        ("system[1]", "system[1]", True),
        ("system[1].text", "system[1]", True),
        ("system[10]", "system[1]", False),
        ("messages[3].content[0]", "messages[3]", True),
        ("metadata_extra", "metadata", False),
        ("anything", "", True),
    ],
)
def test_path_is_within(path: str, ancestor: str, within: bool) -> None:
    assert path_is_within(path, ancestor) is within


def test_compact_is_stable_json() -> None:
    assert compact({"b": 1, "a": [1, "é"]}) == '{"b":1,"a":[1,"é"]}'


# --- deeply nested JSON -----------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(body=bodies())
def test_a_deeply_nested_difference_is_found_or_refused_never_raised(body: str) -> None:
    try:
        before = json.loads(body)
    except (ValueError, RecursionError):
        return
    if not isinstance(before, dict):
        return
    after = {**before, "system": [{"type": "text", "text": "added"}], "messages": [before, before]}
    try:
        diff_json(before, after)
    except RecursionError:
        pytest.fail("diff_json raised on nesting it should refuse")


def test_a_client_block_whose_ttl_sluice_raised_is_changed_not_added() -> None:
    from rules.config import Rules, SystemBlock
    from rules.providers import wire_format
    from rules.rewrite import RuleContext, apply_request_rules

    client_block = {
        "type": "text",
        "text": "You are a helpful agent.",
        "cache_control": {"type": "ephemeral"},
    }
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "system": [client_block],
        "messages": [{"role": "user", "content": "hi"}],
    }
    rules = Rules(system_blocks=[SystemBlock(name="policy", text="Be careful.", cache="1h")])
    context = RuleContext(wire=wire_format("messages"), host="api.anthropic.com", rules=rules)
    result = apply_request_rules(json.dumps(body).encode(), context)
    assert result.applied == ["system_block:policy", "cache_ttl_order"]
    assert result.parsed is not None and result.rewritten is not None
    changes = diff_json(result.parsed, result.rewritten)
    assert [(change.op, change.path) for change in changes] == [
        ("added", "system[0].cache_control.ttl"),  # inside the client's block: "~ changed" in the view
        ("added", "system[1]"),  # sluice's own block
    ]
