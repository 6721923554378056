from __future__ import annotations

import json
from typing import Any

from rules.config import Rules, SystemBlock
from rules.providers import wire_format
from rules.replay import replay_request
from rules.rewrite import RuleContext

MARK = {"type": "ephemeral"}


def context(rules: Rules, api: str = "messages") -> RuleContext:
    return RuleContext(wire=wire_format(api), host="api.anthropic.com", rules=rules)


def cached_body(marks: int = 2, **fields: Any) -> bytes:
    system = [{"type": "text", "text": f"part {i}", "cache_control": MARK} for i in range(marks - 1)]
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "system": system or "plain",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": MARK}]}],
        **fields,
    }
    return json.dumps(body).encode()


def test_nothing_configured_changes_nothing() -> None:
    result = replay_request("f1", "/v1/messages", cached_body(), context(Rules()))
    assert (result.bytes_added, result.applied, result.prefix) == (0, [], "unchanged")
    assert (result.breakpoints_before, result.breakpoints_after) == (2, 2)


def test_the_cap_shows_breakpoints_before_and_after_and_keeps_the_prefix() -> None:
    result = replay_request("f1", "/v1/messages", cached_body(6), context(Rules(cache_control_max=4)))
    assert (result.breakpoints_before, result.breakpoints_after) == (6, 4)
    assert result.applied == ["cache_control_cap:6->4"] and result.bytes_added < 0
    assert result.prefix == "unchanged"  # markers are not part of the cached text; the last one is kept


def test_an_alias_to_another_model_busts_the_cache() -> None:
    rules = Rules(model_aliases={"claude-sonnet-4-5": "claude-opus-4-1"})
    result = replay_request("f1", "/v1/messages", cached_body(), context(rules))
    assert result.model == "claude-opus-4-1"
    assert result.prefix == "changed"
    assert (
        result.prefix_note
        == "model changes from claude-sonnet-4-5 to claude-opus-4-1: caches are kept per model"
    )


def test_openai_caches_the_whole_prompt_so_a_system_message_changes_it() -> None:
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode()
    rules = Rules(system_blocks=[SystemBlock(name="policy", text="Be brief.")])
    result = replay_request("f1", "/v1/chat/completions", body, context(rules, "chat"))
    assert result.blocks_injected == ["policy"]
    assert result.breakpoints_before is None  # OpenAI has no breakpoints
    assert result.prefix == "changed" and result.prefix_note is not None


def test_a_body_the_rules_cannot_read_is_reported_unchanged_with_why() -> None:
    result = replay_request("f1", "/v1/messages", b"{not json", context(Rules(max_tokens_default=10)))
    assert (result.bytes_added, result.prefix, result.note) == (0, "not judged", "body is not JSON")
