import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rules.providers.anthropic.cache_control import (
    cap_cache_control,
    count_cache_breakpoints,
    drop_order,
    find_cache_breakpoints,
    fix_ttl_order,
    mark_cache,
)

EPHEMERAL = {"type": "ephemeral"}
LONG = {"type": "ephemeral", "ttl": "1h"}


def text(label: str, marker: dict[str, str] | None = None) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "text", "text": label}
    if marker is not None:
        block["cache_control"] = marker
    return block


def tool(name: str, marker: dict[str, str] | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {"name": name, "input_schema": {"type": "object"}}
    if marker is not None:
        result["cache_control"] = marker
    return result


def claude_code_like(breakpoint_messages: int = 3) -> dict[str, Any]:
    """tools[last], system[last], then `breakpoint_messages` user turns with a marker each."""
    messages = []
    for turn in range(breakpoint_messages):
        messages.append({"role": "user", "content": [text(f"u{turn}", EPHEMERAL)]})
        messages.append({"role": "assistant", "content": [text(f"a{turn}")]})
    return {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "tools": [tool("a"), tool("b", EPHEMERAL)],
        "system": [text("x-anthropic-billing-header: cc_version=1"), text("You are helpful.", EPHEMERAL)],
        "messages": messages,
    }


def marked_paths(body: dict[str, Any]) -> list[tuple[str | int, ...]]:
    return [bp.path for bp in find_cache_breakpoints(body)]


# --- finding ------------------------------------------------------------------------------------------


def test_breakpoints_are_found_in_prompt_order_including_nested_blocks() -> None:
    body = {
        "cache_control": EPHEMERAL,  # top-level automatic caching: the last cacheable block
        "tools": [tool("t", EPHEMERAL)],
        "system": [text("s", LONG)],
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "x",
                        "content": [text("inner", EPHEMERAL), {"type": "image", "cache_control": EPHEMERAL}],
                        "cache_control": EPHEMERAL,
                    },
                    {
                        "type": "document",
                        "source": {"type": "content", "content": [text("page", EPHEMERAL)]},
                        "cache_control": EPHEMERAL,
                    },
                ],
            },
        ],
    }
    assert marked_paths(body) == [
        ("tools", 0),
        ("system", 0),
        ("messages", 0, "content", 0, "content", 0),
        ("messages", 0, "content", 0, "content", 1),
        ("messages", 0, "content", 0),
        ("messages", 0, "content", 1, "source", "content", 0),
        ("messages", 0, "content", 1),
        (),
    ]
    assert [bp.ttl for bp in find_cache_breakpoints(body)][:2] == ["5m", "1h"]


@pytest.mark.parametrize(
    "body",
    [
        {"system": "a string system has no markers", "messages": [{"role": "user", "content": "hi"}]},
        {"messages": [{"role": "user", "content": [text("hi")]}]},
        # A tool_use input is the model's data: a key that happens to be named cache_control is not a marker.
        {
            "messages": [
                {"role": "assistant", "content": [{"type": "tool_use", "input": {"cache_control": 1}}]}
            ]
        },
        # An explicit null is no breakpoint.
        {"system": [{"type": "text", "text": "s", "cache_control": None}]},
        # Shapes the API rejects are not guessed at.
        {"system": 42, "messages": "nope", "tools": {"a": 1}},
    ],
)
def test_bodies_without_breakpoints(body: dict[str, Any]) -> None:
    assert count_cache_breakpoints(body) == 0
    assert cap_cache_control(body, 0) is body


# --- capping ------------------------------------------------------------------------------------------


def test_anthropic_limit_five_to_four_drops_the_earliest_message_breakpoint() -> None:
    body = claude_code_like(3)  # tools, system, 3 messages = 5
    capped = cap_cache_control(body, 4)
    assert count_cache_breakpoints(capped) == 4
    assert marked_paths(capped) == [
        ("tools", 1),
        ("system", 1),
        ("messages", 2, "content", 0),
        ("messages", 4, "content", 0),
    ]
    # The block stays, only its marker goes.
    assert capped["messages"][0]["content"] == [text("u0")]


def test_sluice_blocks_are_dropped_before_the_clients() -> None:
    body = claude_code_like(2)  # 4 of the client's
    body["system"].append(text("operator policy", EPHEMERAL))  # sluice injected system[2]
    capped = cap_cache_control(body, 4, sluice_paths={("system", 2)})
    assert "cache_control" not in capped["system"][2]
    assert count_cache_breakpoints(capped) == 4
    assert marked_paths(capped) == marked_paths(claude_code_like(2))


def test_mark_cache_caps_then_orders_ttls_and_says_what_it_did() -> None:
    body = claude_code_like(3)
    body["messages"][-2]["content"][0]["cache_control"] = LONG  # the last is 1h: the rest must be too
    marked, done = mark_cache(body, 4, [])
    assert done == ["cache_control_cap:5->4", "cache_ttl_order"]
    assert [bp.ttl for bp in find_cache_breakpoints(marked)] == ["1h"] * 4
    assert mark_cache(marked, 4, []) == (marked, [])
    assert mark_cache(marked, 4, [])[0] is marked  # nothing to do: the very same body


def test_sluice_block_that_is_the_last_breakpoint_is_kept() -> None:
    body = {
        "tools": [tool("a", EPHEMERAL), tool("b", EPHEMERAL)],
        "system": [text("client", EPHEMERAL), text("sluice", EPHEMERAL)],
        "messages": [{"role": "user", "content": "hi"}],
    }
    capped = cap_cache_control(body, 1, sluice_paths={("system", 1)})
    assert marked_paths(capped) == [("system", 1)]


def test_documented_drop_order() -> None:
    body = {
        "tools": [tool("t0", EPHEMERAL), tool("t1", EPHEMERAL)],
        "system": [text("s0", EPHEMERAL), text("s1", EPHEMERAL), text("ours", EPHEMERAL)],
        "messages": [
            {"role": "user", "content": [text("m0", EPHEMERAL)]},
            {"role": "user", "content": [text("m1", EPHEMERAL)]},
            {"role": "user", "content": [text("m2", EPHEMERAL)]},
        ],
    }
    order = [bp.path for bp in drop_order(find_cache_breakpoints(body), {("system", 2)})]
    assert order == [
        ("system", 2),  # sluice's own
        ("tools", 0),  # tools other than the last
        ("system", 0),  # system other than the last
        ("messages", 0, "content", 0),  # messages, earliest first
        ("messages", 1, "content", 0),
        ("tools", 1),  # then the last tools one
        ("system", 1),  # then the last system one
    ]  # ("messages", 2, ...) — the last — never
    for limit in range(1, 8):
        kept = marked_paths(cap_cache_control(body, limit, {("system", 2)}))
        assert kept[-1] == ("messages", 2, "content", 0)
        assert len(kept) == limit


def test_limit_zero_removes_every_marker_including_top_level() -> None:
    body = claude_code_like(1)
    body["cache_control"] = EPHEMERAL
    capped = cap_cache_control(body, 0)
    assert count_cache_breakpoints(capped) == 0
    assert "cache_control" not in capped


def test_cap_never_mutates_its_input() -> None:
    body = claude_code_like(5)
    before = copy.deepcopy(body)
    cap_cache_control(body, 2)
    fix_ttl_order(body)
    assert body == before


def test_cap_keeps_key_order_of_the_changed_block() -> None:
    body = {
        "messages": [{"role": "user", "content": [{"type": "text", "cache_control": EPHEMERAL, "text": "x"}]}]
    }
    body["messages"].append({"role": "user", "content": [text("y", EPHEMERAL)]})
    capped = cap_cache_control(body, 1)
    assert list(capped["messages"][0]["content"][0]) == ["type", "text"]


# --- TTL order ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("markers", "expected"),
    [
        # Already valid: 1h first, or no 1h at all.
        (["1h", "5m", "5m"], ["1h", "5m", "5m"]),
        (["5m", "5m"], ["5m", "5m"]),
        # Every 5m before the last 1h becomes 1h; 5m after it stays.
        (["5m", "1h"], ["1h", "1h"]),
        (["5m", "5m", "1h", "5m"], ["1h", "1h", "1h", "5m"]),
        (["1h", "5m", "1h", "5m"], ["1h", "1h", "1h", "5m"]),
    ],
)
def test_fix_ttl_order_upgrades_earlier_short_breakpoints(markers: list[str], expected: list[str]) -> None:
    def marker(ttl: str) -> dict[str, str]:
        return dict(LONG) if ttl == "1h" else dict(EPHEMERAL)

    body = {
        "tools": [tool("t", marker(markers[0]))],
        "messages": [
            {"role": "user", "content": [text(str(i), marker(ttl))]} for i, ttl in enumerate(markers[1:])
        ],
    }
    fixed = fix_ttl_order(body)
    assert [bp.ttl for bp in find_cache_breakpoints(fixed)] == expected
    if markers == expected:
        assert fixed is body


def test_fix_ttl_order_covers_the_top_level_marker_and_keeps_the_marker_type() -> None:
    body = {"system": [text("s", {"type": "ephemeral", "ttl": "5m"})], "cache_control": LONG, "messages": []}
    fixed = fix_ttl_order(body)
    assert fixed["system"][0]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}


def test_fix_ttl_order_leaves_a_non_object_marker_alone() -> None:
    body = {"system": [{"type": "text", "text": "s", "cache_control": "ephemeral"}, text("t", LONG)]}
    assert fix_ttl_order(body) is body


# --- properties ---------------------------------------------------------------------------------------

MARKERS = st.one_of(st.none(), st.just(EPHEMERAL), st.just(LONG))


@st.composite
def request_bodies(draw: st.DrawFn) -> dict[str, Any]:
    def blocks(prefix: str) -> list[dict[str, Any]]:
        count = draw(st.integers(0, 4))
        return [text(f"{prefix}{i}", draw(MARKERS)) for i in range(count)]

    messages = []
    for index in range(draw(st.integers(0, 5))):
        content = blocks(f"m{index}.")
        if draw(st.booleans()):
            result: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": str(index),
                "content": blocks("r"),
            }
            marker = draw(MARKERS)
            if marker is not None:
                result["cache_control"] = marker
            content.append(result)
        messages.append({"role": "user", "content": content})
    body: dict[str, Any] = {
        "tools": [tool(f"t{i}", draw(MARKERS)) for i in range(draw(st.integers(0, 3)))],
        "system": blocks("s"),
        "messages": messages,
    }
    if draw(st.booleans()):
        body["cache_control"] = EPHEMERAL
    return body


@given(request_bodies(), st.integers(0, 6), st.data())
def test_cap_properties(body: dict[str, Any], limit: int, data: st.DataObject) -> None:
    before = copy.deepcopy(body)
    paths = marked_paths(body)
    ours = set(data.draw(st.lists(st.sampled_from(paths))) if paths else [])
    capped = cap_cache_control(body, limit, ours)
    after = marked_paths(capped)
    assert len(after) <= limit
    assert body == before  # input untouched
    if len(paths) <= limit:
        assert capped is body
    else:
        assert len(after) == limit
        if limit >= 1:
            assert after[-1] == paths[-1]  # the longest prefix keeps its breakpoint
        assert set(after) <= set(paths)
        # Only markers were removed: stripping them from both sides gives the same request.
        assert _unmarked(capped) == _unmarked(body)


@given(request_bodies())
def test_fixed_ttl_order_is_valid_and_idempotent(body: dict[str, Any]) -> None:
    fixed = fix_ttl_order(body)
    ttls = [bp.ttl for bp in find_cache_breakpoints(fixed)]
    assert ttls == sorted(ttls, key=lambda ttl: ttl != "1h")  # every 1h before every 5m
    assert fix_ttl_order(fixed) is fixed
    assert marked_paths(fixed) == marked_paths(body)


def _unmarked(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _unmarked(item) for key, item in value.items() if key != "cache_control"}
    if isinstance(value, list):
        return [_unmarked(item) for item in value]
    return value
