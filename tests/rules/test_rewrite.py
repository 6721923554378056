import dataclasses
import json
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from rules.config import Rules, SystemBlock
from rules.providers import wire_format
from rules.providers.anthropic.cache_control import count_cache_breakpoints
from rules.rewrite import (
    RawNumber,
    alias_model,
    apply_request_rules,
    dump_json,
    inject_system_blocks,
    parse_json,
    select_system_blocks,
    should_strip_billing_block,
    stamp_user_id,
)
from tests.rules.nesting import bodies
from tests.rules.request_bodies import BILLING, IDENTITY, POLICY, anthropic_body, ctx, raw

# --- scope --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "host", "client", "models", "selected"),
    [
        ({}, "api.anthropic.com", None, [], True),
        ({"hosts": ["API.Anthropic.com"]}, "api.anthropic.com", None, [], True),
        ({"hosts": ["*.example.com"]}, "api.anthropic.com", None, [], False),
        ({"clients": ["alice"]}, "h", "alice", [], True),
        ({"clients": ["alice"]}, "h", "bob", [], False),
        ({"clients": ["alice"]}, "h", None, [], False),
        ({"models": ["claude-opus-*"]}, "h", None, ["claude-opus-4-1"], True),
        ({"models": ["claude-opus-*"]}, "h", None, ["fast", "claude-haiku-4-5"], False),
        ({"models": ["fast"]}, "h", None, ["fast", "claude-haiku-4-5"], True),  # alias name matches too
        ({"models": ["claude-*"]}, "h", None, [], False),
    ],
)
def test_scope(
    scope: dict[str, list[str]], host: str, client: str | None, models: list[str], selected: bool
) -> None:
    block = SystemBlock.model_validate({"name": "b", "text": "t", **scope})
    assert select_system_blocks([block], host, client, models) == ([block] if selected else [])


# --- identity -----------------------------------------------------------------------------------------

CLAUDE_CODE_USER_ID = json.dumps({"device_id": "d", "session_id": "s"})


@pytest.mark.parametrize(
    ("api", "body", "expected"),
    [
        ("messages", {}, {"metadata": {"user_id": "alice-42"}}),
        ("messages", {"metadata": None}, {"metadata": {"user_id": "alice-42"}}),
        ("messages", {"metadata": {"x": 1}}, {"metadata": {"x": 1, "user_id": "alice-42"}}),
        ("messages", {"metadata": {"user_id": None}}, {"metadata": {"user_id": "alice-42"}}),
        (
            "messages",
            {"metadata": {"user_id": CLAUDE_CODE_USER_ID}},
            {"metadata": {"user_id": CLAUDE_CODE_USER_ID}},
        ),
        ("messages", {"metadata": {"user_id": ""}}, {"metadata": {"user_id": ""}}),
        ("messages", {"metadata": "odd"}, {"metadata": "odd"}),
        ("chat", {}, {"safety_identifier": "alice-42"}),
        ("chat", {"safety_identifier": "theirs"}, {"safety_identifier": "theirs"}),
        ("chat", {"user": "legacy"}, {"user": "legacy", "safety_identifier": "alice-42"}),
    ],
)
def test_stamp_user_id(api: str, body: dict[str, Any], expected: dict[str, Any]) -> None:
    assert stamp_user_id(body, "alice-42", wire_format(api)) == expected


def test_stamp_user_id_skips_ids_openai_would_reject_and_missing_ids() -> None:
    assert stamp_user_id({}, "x" * 129, wire_format("chat")) == {}
    assert stamp_user_id({}, "x" * 129, wire_format("responses")) == {}
    assert stamp_user_id({}, None, wire_format("messages")) == {}


# --- max_tokens, aliases ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "expected"),
    [("fast", "claude-haiku-4-5"), ("Fast", "Fast"), ("claude-opus-4-1", "claude-opus-4-1"), (7, 7)],
)
def test_alias_model(model: Any, expected: Any) -> None:
    body = {"model": model, "messages": []}
    result = alias_model(body, {"fast": "claude-haiku-4-5"})
    assert result == {"model": expected, "messages": []}
    assert list(result) == ["model", "messages"]


# --- billing block ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "setting", "strip"),
    [
        ("api.anthropic.com", None, False),
        ("API.Anthropic.com.", None, False),
        ("gateway.example.com", None, True),
        ("gateway.example.com", False, False),
        ("api.anthropic.com", True, True),
    ],
)
def test_should_strip_billing_block(host: str, setting: bool | None, strip: bool) -> None:
    assert should_strip_billing_block(wire_format("messages"), host, setting) is strip
    assert should_strip_billing_block(wire_format("count_tokens"), host, setting) is strip


def test_the_billing_block_is_kept_for_the_provider_whose_hosts_know_it() -> None:
    assert should_strip_billing_block(wire_format("chat"), "api.openai.com", None) is False


# --- JSON fidelity ------------------------------------------------------------------------------------


def test_numbers_and_strings_round_trip_exactly() -> None:
    body = (
        '{"model":"fast","temperature":0.10,"huge":1e400,"tiny":-0.0,"neg":-0,"big":'
        + "9" * 5000
        + ',"nan":NaN,"s":"caf\\u00e9 \\ud800 \\n \\u2028 \\"q\\"","nested":{"a":[1.50,{"b":2E-3}]}}'
    )
    result = apply_request_rules(body.encode(), ctx(rules=Rules(model_aliases={"fast": "claude-haiku-4-5"})))
    assert result.body is not None
    out = result.body.decode()
    for number in ["0.10", "1e400", "-0.0", '"neg":-0', "9" * 5000, "NaN", "1.50", "2E-3"]:
        assert number in out
    assert '"model":"claude-haiku-4-5"' in out
    # No rule touched "s": it goes out exactly as the client escaped it.
    assert '"s":"caf\\u00e9 \\ud800 \\n \\u2028 \\"q\\""' in out
    assert parse_json(out)["s"] == parse_json(body)["s"]


def test_numbers_in_a_member_a_rule_changed_are_written_as_the_client_wrote_them() -> None:
    numbers = [
        "0.10",
        "1e400",
        "-0.0",
        "-0",
        "9" * 5000,
        "NaN",
        "-Infinity",
        "1.50",
        "2E-3",
        "0.5",
        "42",
        "-7",
    ]
    items = ",".join(f'"n{index}":{number}' for index, number in enumerate(numbers))
    body = '{"model":"m","metadata":{' + items + ',"list":[1,2.25,{"deep":1E+2}]}}'
    result = apply_request_rules(body.encode(), ctx(user_id="alice"))
    assert result.body is not None and result.applied == ["user_id"]
    expected = '{"model":"m","metadata":{' + items + ',"list":[1,2.25,{"deep":1E+2}],"user_id":"alice"}}'
    assert result.body.decode() == expected


def test_members_no_rule_touched_keep_the_clients_bytes() -> None:
    messages = '[ {"role": "user", "content": "caf\\u00e9"} ]'
    body = f'{{\n  "model": "fast",\n  "messages": {messages},\n  "n": 1.50\n}}'
    result = apply_request_rules(body.encode(), ctx(rules=Rules(model_aliases={"fast": "claude-haiku-4-5"})))
    assert result.body == f'{{"model":"claude-haiku-4-5","messages":{messages},"n":1.50}}'.encode()


def test_a_changed_member_with_a_lone_surrogate_is_written_back_escaped() -> None:
    body = '{"model":"m","system":"\\ud800","messages":[]}'
    rules = Rules(system_blocks=[SystemBlock(name="p", text="policy")])
    result = apply_request_rules(body.encode(), ctx(rules=rules))
    assert result.body is not None
    assert b'{"type":"text","text":"\\ud800"}' in result.body


def test_dump_json_is_compact_and_keeps_order() -> None:
    value = {"b": [1, 2.5, True, None], "a": {"é": RawNumber("1e5")}}
    assert dump_json(value) == '{"b":[1,2.5,true,null],"a":{"é":1e5}}'.encode()
    exact = {"a": [RawNumber("0.5"), RawNumber("-3"), (1, "x")], "s": 'é \ud800 \u2028 "q"'}
    assert dump_json(exact) == '{"a":[0.5,-3,[1,"x"]],"s":"é \\ud800 \u2028 \\"q\\""}'.encode()
    with pytest.raises(TypeError):
        dump_json({"a": object()})
    with pytest.raises(ValueError):
        dump_json({"a": float("nan")})


# --- apply_request_rules ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "encoding", "note"),
    [
        (b'{"model":"m"}', "gzip", "body is compressed (gzip)"),
        (b'{"model":"m"}', "br, gzip", "body is compressed (br, gzip)"),
        (b"", None, "body is empty"),
        (b"\xff\xfe{}", None, "body is not UTF-8"),
        (b"model=m", None, "body is not JSON"),
        (b'{"model": "m",', None, "body is not JSON"),
        (b"[1, 2]", None, "not a JSON object"),
        (b'"text"', None, "not a JSON object"),
        (b'{"model":"a","model":"b"}', None, "body has duplicate keys"),
        (b"[" * 100_000 + b"]" * 100_000, None, "body nests too deeply"),
    ],
)
def test_unreadable_bodies_are_forwarded_untouched(body: bytes, encoding: str | None, note: str) -> None:
    rules = Rules(system_blocks=[POLICY], max_tokens_default=100)
    result = apply_request_rules(body, ctx(rules=rules, content_encoding=encoding))
    assert result.body is None
    assert result.note == note
    assert result.applied == []


def test_identity_encoding_is_read() -> None:
    result = apply_request_rules(
        raw({"model": "m"}), ctx(rules=Rules(max_tokens_default=9), content_encoding="identity")
    )
    assert result.applied == ["max_tokens"]


def test_a_wire_format_without_rules_is_left_alone() -> None:
    bare = dataclasses.replace(wire_format("chat"), name="embeddings", rule_set=frozenset())
    context = dataclasses.replace(ctx(rules=Rules(system_blocks=[POLICY])), wire=bare)
    result = apply_request_rules(raw({"model": "m"}), context)
    assert (result.body, result.note) == (None, "no rules for openai embeddings")


def test_a_wire_format_declaring_a_rule_without_its_hook_is_refused() -> None:
    with pytest.raises(ValueError, match="'embeddings': request rule 'max_tokens' has no hook"):
        dataclasses.replace(wire_format("chat"), name="embeddings", rule_set=frozenset({"max_tokens"}))
    with pytest.raises(ValueError, match="unknown request rule 'maxtokens'"):
        dataclasses.replace(wire_format("chat"), name="embeddings", rule_set=frozenset({"maxtokens"}))


def test_full_anthropic_rewrite() -> None:
    client_breakpoints = {"type": "ephemeral"}
    body = {
        "model": "fast",
        "system": [BILLING, {"type": "text", "text": "cc", "cache_control": client_breakpoints}],
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": f"t{i}", "cache_control": client_breakpoints}],
            }
            for i in range(3)
        ],
        "stream": True,
    }
    rules = Rules(
        system_blocks=[SystemBlock(name="policy", text="p", cache="5m")],
        model_aliases={"fast": "claude-haiku-4-5"},
        max_tokens_default=4096,
    )
    result = apply_request_rules(raw(body), ctx(rules=rules, user_id="alice-42", client="alice"))
    assert result.applied == [
        "model_alias:fast->claude-haiku-4-5",
        "system_block:policy",
        "user_id",
        "max_tokens",
        "cache_control_cap:5->4",
    ]
    assert result.model == "claude-haiku-4-5"
    assert result.stream is True
    assert result.note is None
    assert result.body is not None
    sent = json.loads(result.body)
    assert list(sent) == ["model", "system", "messages", "stream", "metadata", "max_tokens"]
    assert sent["system"][0] == BILLING
    # sluice's own marker went first; the client's four stayed.
    assert sent["system"][2] == {"type": "text", "text": "p"}
    assert count_cache_breakpoints(sent) == 4


def test_billing_block_is_stripped_only_when_asked() -> None:
    body = anthropic_body(system=[BILLING, {"type": "text", "text": "a"}])
    assert apply_request_rules(raw(body), ctx()).body is None
    result = apply_request_rules(raw(body), ctx(strip_billing_block=True))
    assert result.applied == ["billing_block"]
    assert result.body is not None
    assert json.loads(result.body)["system"] == [{"type": "text", "text": "a"}]


def test_ttl_order_is_fixed_after_injecting_a_long_block() -> None:
    body = anthropic_body(tools=[{"name": "t", "input_schema": {}, "cache_control": {"type": "ephemeral"}}])
    result = apply_request_rules(raw(body), ctx(rules=Rules(system_blocks=[IDENTITY])))
    assert result.applied == ["system_block:identity", "cache_ttl_order"]
    assert result.body is not None
    assert json.loads(result.body)["tools"][0]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}


def test_count_tokens_gets_blocks_and_aliases_but_not_max_tokens_or_user_id() -> None:
    body = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}
    rules = Rules(system_blocks=[POLICY], model_aliases={"fast": "claude-haiku-4-5"}, max_tokens_default=10)
    result = apply_request_rules(raw(body), ctx(api="count_tokens", rules=rules, user_id="alice-42"))
    assert result.applied == ["model_alias:fast->claude-haiku-4-5", "system_block:policy"]
    assert result.body is not None
    assert set(json.loads(result.body)) == {"model", "messages", "system"}


@pytest.mark.parametrize(
    ("body", "applied", "client_asked"),
    [
        ({"model": "gpt-5", "messages": [], "stream": True}, ["stream_usage"], False),
        (
            {"model": "gpt-5", "messages": [], "stream": True, "stream_options": {"include_usage": True}},
            [],
            True,
        ),
        ({"model": "gpt-5", "messages": []}, [], True),
    ],
)
def test_openai_chat_stream_usage(body: dict[str, Any], applied: list[str], client_asked: bool) -> None:
    result = apply_request_rules(raw(body), ctx("chat", host="api.openai.com"))
    assert result.applied == applied
    assert result.client_asked_usage is client_asked


def test_stream_usage_can_be_turned_off() -> None:
    body = {"model": "gpt-5", "messages": [], "stream": True}
    result = apply_request_rules(raw(body), ctx("chat", rules=Rules(openai_include_usage=False)))
    assert (result.body, result.client_asked_usage, result.stream) == (None, True, True)


def test_openai_responses_rules() -> None:
    body = {"model": "gpt-5", "input": "hi"}
    result = apply_request_rules(
        raw(body), ctx("responses", rules=Rules(system_blocks=[POLICY]), user_id="u")
    )
    assert result.applied == ["system_block:policy", "user_id"]
    assert result.body == (
        b'{"model":"gpt-5","input":"hi","instructions":"Follow the company policy.","safety_identifier":"u"}'
    )


# --- properties ---------------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
ENDPOINTS = ["messages", "count_tokens", "chat", "responses"]


@given(
    st.dictionaries(st.text(max_size=12), JSON_VALUES, max_size=6), st.sampled_from(ENDPOINTS), st.booleans()
)
def test_empty_rules_forward_random_bodies_byte_for_byte(
    body: dict[str, Any], endpoint: str, pretty: bool
) -> None:
    assume(body.get("stream") is not True)  # the default stream-usage rule would apply
    data = json.dumps(body, indent=2 if pretty else None, ensure_ascii=pretty).encode()
    result = apply_request_rules(data, ctx(endpoint))
    assert result.body is None
    assert result.note is None
    assert result.applied == []


@given(
    st.binary(max_size=64), st.sampled_from(ENDPOINTS), st.sampled_from([None, "gzip", "identity", "zstd"])
)
def test_never_raises_on_arbitrary_bytes(data: bytes, endpoint: str, encoding: str | None) -> None:
    rules = Rules(system_blocks=[POLICY], max_tokens_default=5, model_aliases={"a": "b"})
    result = apply_request_rules(data, ctx(endpoint, rules=rules, content_encoding=encoding, user_id="u"))
    assert result.body is None or result.applied


SYSTEMS = st.one_of(
    st.none(),
    st.text(max_size=20),
    st.lists(st.builds(lambda t: {"type": "text", "text": t}, st.text(min_size=1, max_size=20)), max_size=3),
)
BLOCKS = st.lists(
    st.builds(
        SystemBlock,
        name=st.text(min_size=1, max_size=5),
        text=st.text(min_size=1, max_size=20),
        cache=st.sampled_from([None, "5m", "1h"]),
    ),
    max_size=4,
)


@given(SYSTEMS, BLOCKS, st.sampled_from(ENDPOINTS))
def test_injection_is_idempotent(system: Any, blocks: list[SystemBlock], endpoint: str) -> None:
    api = endpoint
    provider = wire_format(api).provider.name
    if provider == "anthropic":
        body = anthropic_body() if system is None else anthropic_body(system=system)
    elif api == "chat":
        leading = [{"role": "system", "content": system}] if isinstance(system, str) else []
        body = {"model": "gpt-5", "messages": [*leading, {"role": "user", "content": "hi"}]}
    else:
        body = {"model": "gpt-5", "input": "hi"} | (
            {"instructions": system} if isinstance(system, str) else {}
        )
    once = inject_system_blocks(body, blocks, wire_format(api))
    assert inject_system_blocks(once, blocks, wire_format(api)) is once
    if once is body and isinstance(system, str) and provider == "anthropic":
        assert once["system"] == system  # nothing injected: a string stays a string


@given(SYSTEMS, BLOCKS, st.sampled_from(ENDPOINTS), st.integers(0, 5))
def test_apply_is_deterministic_and_idempotent(
    system: Any, blocks: list[SystemBlock], endpoint: str, limit: int
) -> None:
    body = anthropic_body() if system is None else anthropic_body(system=system)
    rules = Rules(system_blocks=blocks, cache_control_max=limit, max_tokens_default=10)
    context = ctx(endpoint, rules=rules, user_id="alice")
    first = apply_request_rules(raw(body), context)
    second = apply_request_rules(raw(body), context)
    assert first.body == second.body  # same request, same bytes, every time
    if first.body is not None:
        # Re-applying to what sluice sent changes nothing: it is forwarded byte for byte.
        assert apply_request_rules(first.body, context).body is None


@given(JSON_VALUES)
def test_dump_of_parsed_json_equals_compact_json_dumps(value: Any) -> None:
    compact = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    assert dump_json(parse_json(json.dumps(value, indent=1))) == compact.encode()


# --- deeply nested JSON -----------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(body=bodies())
def test_deeply_nested_bodies_are_forwarded_untouched_never_raised(body: str) -> None:
    rules = Rules(system_blocks=[POLICY], max_tokens_default=100, cache_control_max=1)
    result = apply_request_rules(body.encode(), ctx(rules=rules))  # raises nothing
    if result.note is not None:
        assert result.body is None


@pytest.mark.parametrize("opener", [b"[", b'{"a":'])
def test_a_body_nested_past_the_parser_limit_says_so(opener: bytes) -> None:
    body = b'{"model":"m","messages":' + opener * 100_000 + b"1"
    result = apply_request_rules(body, ctx(rules=Rules(max_tokens_default=100)))
    assert (result.body, result.note) == (None, "body nests too deeply")
