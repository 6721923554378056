"""The operator's rules on Bedrock bodies: InvokeModel takes Anthropic's hooks (a system block in
`system`, max_tokens, cache markers),
Converse its own (`system` blocks, a `cachePoint` after a cached one)."""

from __future__ import annotations

from rules.config import SystemBlock
from rules.providers import wire_format
from rules.providers.bedrock.converse import inject_system, outline
from rules.transcript import outline_request

HOUSE = SystemBlock(name="house", text="Be brief.")
CACHED = SystemBlock(name="cached", text="Long preamble.", cache="1h")


def test_converse_gets_text_blocks_after_the_clients_and_a_cache_point_when_cached():
    body = {"messages": [], "system": [{"text": "Mine."}]}
    new, names, paths = inject_system(body, [HOUSE, CACHED])
    assert new["system"] == [
        {"text": "Mine."},
        {"text": "Be brief."},
        {"text": "Long preamble."},
        {"cachePoint": {"type": "default", "ttl": "1h"}},
    ]
    assert names == ["house", "cached"] and paths == [("system", 1), ("system", 2)]
    assert body == {"messages": [], "system": [{"text": "Mine."}]}  # never mutated


def test_converse_without_system_gets_one_and_a_present_block_is_not_repeated():
    new, _, _ = inject_system({"messages": []}, [HOUSE])
    assert new["system"] == [{"text": "Be brief."}]
    same = {"system": [{"text": "Be brief."}]}
    assert inject_system(same, [HOUSE])[0] is same


def test_a_system_that_is_not_a_list_is_left_alone():
    body = {"system": "text"}
    assert inject_system(body, [HOUSE]) == (body, [], [])


def test_invoke_uses_anthropics_hooks():
    wire = wire_format("bedrock_invoke")
    assert wire.inject_system is not None and wire.backfill_max_tokens is not None
    body, names, _ = wire.inject_system({"anthropic_version": "bedrock-2023-05-31", "messages": []}, [HOUSE])
    assert body["system"] == [{"type": "text", "text": "Be brief."}] and names == ["house"]
    assert wire.backfill_max_tokens({"messages": []}, 4096)["max_tokens"] == 4096
    assert {"system", "max_tokens", "cache", "billing"} <= wire.rule_set and "alias" not in wire.rule_set


def test_a_converse_request_is_laid_out_for_the_view():
    body = {
        "system": [{"text": "Be brief."}, {"cachePoint": {"type": "default"}}],
        "messages": [
            {
                "role": "user",
                "content": [{"text": "Hi"}, {"image": {"format": "png", "source": {"bytes": "..."}}}],
            },
            {
                "role": "assistant",
                "content": [{"toolUse": {"toolUseId": "t1", "name": "get", "input": {"a": 1}}}],
            },
        ],
        "inferenceConfig": {"maxTokens": 10},
        "toolConfig": {"tools": [{"toolSpec": {"name": "get", "inputSchema": {"json": {}}}}]},
    }
    shown = outline_request(wire_format("bedrock_converse"), body)
    assert shown == outline(body)
    assert [(e.kind, e.text) for e in shown.system] == [
        ("text", "Be brief."),
        ("cache_point", '{"type":"default"}'),
    ]
    assert [e.kind for e in shown.messages] == ["text", "image", "tool_use"]
    assert shown.tools[0].name == "get"
    assert ("inferenceConfig", '{"maxTokens": 10}') in shown.settings or shown.settings
