from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules.cache_health import (
    HIT,
    MISS,
    NONE,
    NOT_JUDGED,
    WRITE,
    CacheVerdict,
    PromptShape,
    affinity_key,
    conversation_key,
    judge_cache,
    read_prompt_shape,
    remember,
)
from rules.providers import wire_format
from rules.rewrite import parse_json
from tests.rules.nesting import bodies

EPHEMERAL = {"type": "ephemeral"}
T0 = 1_800_000_000.0


def anthropic(
    turns: int = 1, *, system: str = "You are Claude.", ttl: str | None = None, **extra: Any
) -> dict[str, Any]:
    """A Claude Code-like conversation: tools, a cached system prompt, and `turns` user turns, the last one
    carrying the moving breakpoint."""
    marker = {**EPHEMERAL, "ttl": ttl} if ttl else EPHEMERAL
    messages: list[dict[str, Any]] = []
    for turn in range(turns):
        if turn:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": f"answer {turn}"}]})
        block: dict[str, Any] = {"type": "text", "text": f"question {turn}"}
        if turn == turns - 1:
            block["cache_control"] = marker
        messages.append({"role": "user", "content": [block]})
    return {
        "model": "claude-sonnet-4-5",
        "tools": [{"name": "Bash", "description": "Run.", "input_schema": {"type": "object"}}],
        "system": [{"type": "text", "text": system, "cache_control": marker}],
        "messages": messages,
        **extra,
    }


def shape_of(body: dict[str, Any], api: str = "messages") -> PromptShape:
    shape = read_prompt_shape(wire_format(api), body)
    assert shape is not None
    return shape


def turn(
    body: dict[str, Any], *, started: float = T0, credential: str = "keys[0]", cached: bool = True
) -> Any:
    return remember(shape_of(body), started=started, credential=credential, cached=cached)


def judge(
    previous: Any, body: dict[str, Any], *, read: int = 0, write: int = 0, **kwargs: Any
) -> CacheVerdict:
    options = {"started": T0 + 60, "credential": "keys[0]", "ok": True} | kwargs
    return judge_cache(previous, shape_of(body), cache_read=read, cache_write=write, **options)


# --- reading a prompt -----------------------------------------------------------------------------------


def test_an_anthropic_shape_has_one_digest_per_block_and_its_breakpoints() -> None:
    body = anthropic(turns=2)
    untouched = copy.deepcopy(body)
    shape = shape_of(body)
    assert body == untouched
    assert shape.labels == (
        "tools[0]",
        "system[0]",
        "messages[0].content[0]",
        "messages[1].content[0]",
        "messages[2].content[0]",
    )
    assert shape.breakpoints == (1, 4)
    assert shape.cacheable == 5 and shape.messages_start == 2 and shape.ttl_seconds == 300


def test_moving_the_breakpoint_forward_keeps_the_prefix() -> None:
    first, second = shape_of(anthropic(turns=1)), shape_of(anthropic(turns=2))
    assert second.chain[: first.cacheable * 8] == first.chain[: first.cacheable * 8]


@pytest.mark.parametrize(
    ("body", "breakpoints", "ttl"),
    [
        (anthropic(ttl="1h"), (1, 2), 3600),
        # automatic caching: the request-level marker caches the last block
        ({"messages": [{"role": "user", "content": "hi"}], "cache_control": EPHEMERAL}, (0,), 300),
        # a marker inside a tool_result caches the top-level block that holds it
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "a"},
                            {
                                "type": "tool_result",
                                "tool_use_id": "t",
                                "content": [{"type": "text", "text": "r", "cache_control": EPHEMERAL}],
                            },
                        ],
                    }
                ]
            },
            (1,),
            300,
        ),
        ({"messages": [{"role": "user", "content": "no caching asked"}]}, (), 300),
    ],
)
def test_breakpoints_and_ttl(body: dict[str, Any], breakpoints: tuple[int, ...], ttl: int) -> None:
    shape = shape_of(body)
    assert (shape.breakpoints, shape.ttl_seconds) == (breakpoints, ttl)
    assert shape.cacheable == (breakpoints[-1] + 1 if breakpoints else 0)


def test_openai_prompts_are_cacheable_whole() -> None:
    chat = shape_of(
        {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]}, "chat"
    )
    assert chat.labels == ("messages[0]", "messages[1]") and chat.cacheable == 2
    responses = shape_of(
        {"instructions": "be kind", "input": "hi", "prompt_cache_retention": "24h"}, "responses"
    )
    assert responses.labels == ("instructions", "input") and responses.ttl_seconds == 86_400


@pytest.mark.parametrize(
    ("api", "body"),
    [
        ("count_tokens", anthropic()),  # a wire format without a prompt cache to judge
        ("messages", "not a dict"),
        ("messages", ["nope"]),
        ("chat", None),
    ],
)
def test_nothing_to_judge(api: str, body: Any) -> None:
    assert read_prompt_shape(wire_format(api), body) is None


def test_odd_bodies_are_read_without_raising() -> None:
    for body in ({"system": 3, "messages": [None, {"role": "user"}]}, {"tools": "x", "messages": "y"}, {}):
        assert read_prompt_shape(wire_format("messages"), body) is not None
        assert read_prompt_shape(wire_format("chat"), body) is not None


# --- naming a conversation ------------------------------------------------------------------------------


def test_a_conversation_is_its_session_or_client_with_model_and_first_user_message() -> None:
    shape, later = shape_of(anthropic(turns=1)), shape_of(anthropic(turns=3))
    key = conversation_key("anthropic", "claude-sonnet-4-5", "s-1", "alice", shape)
    assert key == conversation_key("anthropic", "claude-sonnet-4-5", "s-1", "bob", later)  # session wins
    assert key != conversation_key("anthropic", "claude-haiku-4-5", "s-1", "alice", shape)
    assert key != conversation_key("anthropic", "claude-sonnet-4-5", "s-2", "alice", shape)
    other_task = shape_of({**anthropic(), "messages": [{"role": "user", "content": "a sub-agent's task"}]})
    assert key != conversation_key("anthropic", "claude-sonnet-4-5", "s-1", "alice", other_task)
    without = conversation_key("anthropic", "claude-sonnet-4-5", None, "alice", shape)
    assert without == conversation_key("anthropic", "claude-sonnet-4-5", None, "alice", later)
    assert without != conversation_key("anthropic", "claude-sonnet-4-5", None, "bob", shape)


# --- judging --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("previous", "read", "write", "ok", "expected"),
    [
        (None, 0, 900, True, CacheVerdict(WRITE)),
        (None, 0, 0, True, CacheVerdict(NONE)),
        (None, 500, 0, True, CacheVerdict(HIT)),
        ("cached", 800, 100, True, CacheVerdict(HIT)),
        ("uncached", 0, 0, True, CacheVerdict(NONE)),  # nothing was cached: nothing to miss
        ("uncached", 0, 700, True, CacheVerdict(WRITE)),
        ("cached", 0, 0, False, NOT_JUDGED),  # a failed call is not judged
    ],
)
def test_verdicts(previous: str | None, read: int, write: int, ok: bool, expected: CacheVerdict) -> None:
    before = None if previous is None else turn(anthropic(turns=1), cached=previous == "cached")
    assert judge(before, anthropic(turns=2), read=read, write=write, ok=ok) == expected


@pytest.mark.parametrize(
    ("current", "kwargs", "note"),
    [
        (
            anthropic(turns=2, system="You are Claude. Today is Tuesday."),
            {},
            "prefix changed at system[0]",
        ),
        (
            {**anthropic(turns=2), "tools": []},
            {},
            "prefix changed at system[0]",  # the tool list went away: block 0 is the system prompt now
        ),
        (
            anthropic(turns=2, thinking={"type": "enabled", "budget_tokens": 2000}),
            {},
            "prefix changed: tool_choice or thinking settings differ",
        ),
        (
            anthropic(turns=2),
            {"started": T0 + 301},
            "TTL expired (5m01s since the previous call; cache TTL 5m)",
        ),
        (
            anthropic(turns=2),
            {"credential": "keys[1]"},
            "credential switched (keys[0] → keys[1])",
        ),
        (
            anthropic(turns=2, system="changed"),
            {"credential": "keys[1]", "started": T0 + 7200},
            "credential switched (keys[0] → keys[1]); prefix changed at system[0]; "
            "TTL expired (2h since the previous call; cache TTL 5m)",
        ),
        (
            {**anthropic(turns=1), "messages": []},
            {},
            "prefix changed: the prompt is shorter than the cached prefix",
        ),
        (
            anthropic(turns=2),
            {},
            "cause unknown: same prefix and credential, within the TTL",
        ),
    ],
)
def test_misses_name_their_likely_cause(current: dict[str, Any], kwargs: dict[str, Any], note: str) -> None:
    assert judge(turn(anthropic(turns=1)), current, **kwargs) == CacheVerdict(MISS, note)


def test_a_one_hour_breakpoint_outlives_five_minutes() -> None:
    previous = turn(anthropic(turns=1, ttl="1h"))
    assert judge(previous, anthropic(turns=2, ttl="1h"), started=T0 + 600).note == (
        "cause unknown: same prefix and credential, within the TTL"
    )
    assert judge(previous, anthropic(turns=2, ttl="1h"), started=T0 + 3601).note == (
        "TTL expired (1h since the previous call; cache TTL 1h)"
    )


def test_no_breakpoint_left_or_none_within_the_lookback() -> None:
    previous = turn(anthropic(turns=1))
    unmarked = anthropic(turns=2)
    for message in unmarked["messages"]:
        for block in message["content"]:
            block.pop("cache_control", None)
    unmarked["system"][0].pop("cache_control")
    assert judge(previous, unmarked).note == "no cache_control breakpoint in this request"
    # 12 more turns = 24 more blocks: the new breakpoint is more than 20 blocks past the cached one.
    far = anthropic(turns=13)
    far["system"][0].pop("cache_control")
    assert judge(previous, far).note == "no breakpoint within 20 blocks after the cached prefix"


def test_openai_misses_after_a_hit() -> None:
    def chat(*texts: str) -> dict[str, Any]:
        return {"messages": [{"role": "user", "content": text} for text in texts]}

    first = read_prompt_shape(wire_format("chat"), chat("long prompt", "q1"))
    assert first is not None
    previous = remember(first, started=T0, credential="k", cached=True)
    current = read_prompt_shape(wire_format("chat"), chat("long prompt changed", "q1", "q2"))
    assert current is not None
    verdict = judge_cache(
        previous, current, started=T0 + 10, credential="k", cache_read=0, cache_write=0, ok=True
    )
    assert verdict == CacheVerdict(MISS, "prefix changed at messages[0]")
    # Automatic caching has no breakpoints to miss: a miss on the same prefix is not blamed on them.
    same = read_prompt_shape(wire_format("chat"), chat("long prompt", "q1", "q2"))
    assert same is not None
    verdict = judge_cache(
        previous, same, started=T0 + 10, credential="k", cache_read=0, cache_write=0, ok=True
    )
    assert verdict == CacheVerdict(MISS, "cause unknown: same prefix and credential, within the TTL")


def test_remember_keeps_only_the_cacheable_digests() -> None:
    shape = shape_of(anthropic(turns=3))
    kept = remember(shape, started=T0, credential="k", cached=True)
    assert kept.blocks == shape.cacheable and kept.breakpoints == shape.breakpoints
    nothing = remember(
        shape_of({"messages": [{"role": "user", "content": "x"}]}), started=T0, credential="k", cached=False
    )
    assert nothing.blocks == 0


def _counting_digests(monkeypatch) -> list[object]:  # type: ignore[no-untyped-def]
    import rules.cache_health as cache_health

    digested: list[object] = []
    real = cache_health._block_digest
    monkeypatch.setattr(
        cache_health, "_block_digest", lambda role, block: digested.append(block) or real(role, block)
    )
    return digested


def test_blocks_parsed_before_keep_their_digests(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    tools = parse_json(json.dumps([{"name": f"t{i}", "input_schema": {}} for i in range(5)]))
    earlier = parse_json(json.dumps({"role": "user", "content": [{"type": "text", "text": "one"}]}))
    first = {"model": "m", "tools": tools, "messages": [earlier]}
    later = {"role": "user", "content": [{"type": "text", "text": "two", "cache_control": EPHEMERAL}]}
    second = {**first, "messages": [earlier, parse_json(json.dumps(later))]}
    fresh = read_prompt_shape(wire_format("messages"), json.loads(json.dumps(second)))  # plain dicts
    read_prompt_shape(wire_format("messages"), first)

    digested = _counting_digests(monkeypatch)
    remembered = read_prompt_shape(wire_format("messages"), second)

    assert remembered == fresh  # the same shape, digest for digest
    assert digested == [{"type": "text", "text": "two"}]  # only the new block: the rest were digested before
    assert read_prompt_shape(wire_format("messages"), second) == fresh and len(digested) == 1


def test_a_kept_digest_is_for_its_role_and_marker_handling() -> None:
    block = parse_json('{"type": "text", "text": "same", "cache_control": {"type": "ephemeral"}}')
    as_user = read_prompt_shape(wire_format("messages"), {"messages": [{"role": "user", "content": [block]}]})
    as_assistant = read_prompt_shape(
        wire_format("messages"), {"messages": [{"role": "assistant", "content": [block]}]}
    )
    unparsed = read_prompt_shape(
        wire_format("messages"), {"messages": [{"role": "assistant", "content": [dict(block)]}]}
    )
    assert as_user is not None and as_assistant is not None
    assert as_user.chain != as_assistant.chain and as_assistant == unparsed


def test_a_rebuilt_system_list_still_reuses_the_clients_block_digests(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    client_blocks = parse_json(json.dumps([{"type": "text", "text": f"client block {i}"} for i in range(3)]))
    ours = {"type": "text", "text": "operator policy"}
    turn = {
        "model": "m",
        "system": [*client_blocks, dict(ours)],
        "messages": [{"role": "user", "content": "hi"}],
    }
    read_prompt_shape(wire_format("messages"), turn)

    rebuilt = {**turn, "system": [*client_blocks, dict(ours)]}  # a new list, as the rewrite builds per call
    fresh = read_prompt_shape(wire_format("messages"), json.loads(json.dumps(rebuilt)))  # plain dicts
    digested = _counting_digests(monkeypatch)
    shape = read_prompt_shape(wire_format("messages"), rebuilt)

    assert shape == fresh
    assert digested == [ours, "hi"]  # the operator's new block object and the message; not the client's three


# --- deeply nested JSON -----------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(body=bodies(), api=st.sampled_from(["messages", "chat", "responses"]))
def test_a_deeply_nested_prompt_is_shaped_or_skipped_never_raised(body: str, api: str) -> None:
    try:
        parsed = parse_json(body)
    except (ValueError, RecursionError):
        return  # refused by the parser: never reaches the shape
    read_prompt_shape(wire_format(api), parsed)


def _turn(first: str, *later: str, marker: bool = False) -> dict[str, object]:
    block: dict[str, object] = {"type": "text", "text": first}
    if marker:
        block["cache_control"] = {"type": "ephemeral"}
    messages: list[dict[str, object]] = [{"role": "user", "content": [block]}]
    messages += [{"role": "assistant", "content": text} for text in later]
    return {"model": "claude-sonnet-4-5", "messages": messages}


def test_affinity_key_names_a_conversation_across_its_turns() -> None:
    messages = wire_format("messages")
    first = affinity_key(None, "ci", messages, _turn("fix the build", marker=True))
    later = affinity_key(None, "ci", messages, _turn("fix the build", "done", "next"))
    assert first is not None and first == later
    assert affinity_key(None, "other-client", messages, _turn("fix the build")) != first
    assert affinity_key(None, "ci", messages, _turn("write the docs")) != first
    session = affinity_key("5f0c-session", "ci", messages, _turn("anything"))
    assert session == affinity_key("5f0c-session", "other", messages, _turn("a sub-agent's prompt"))
    assert "fix the build" not in str(first)


@pytest.mark.parametrize(
    ("api", "body"),
    [
        ("chat", {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]}),
        ("responses", {"input": "hi"}),
        ("responses", {"input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}]}),
    ],
)
def test_affinity_key_reads_the_openai_shapes(api: str, body: dict[str, object]) -> None:
    assert affinity_key(None, "c", wire_format(api), body) is not None


@pytest.mark.parametrize(
    "body", [None, [], {}, {"messages": [{"role": "assistant", "content": "x"}]}, {"messages": 3}]
)
def test_affinity_key_is_none_without_a_first_user_message(body: object) -> None:
    assert affinity_key(None, "c", wire_format("messages"), body) is None
