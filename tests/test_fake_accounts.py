"""The fake provider's per-key models: a prompt cache with Anthropic's semantics, and per-key rate limits.

The cache-affinity benchmark's verdict rests on these: if the fake cached across keys, or never expired,
or limited keys at random, the comparison would measure the fake.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.fake_accounts import LOOKBACK_BLOCKS, KeyLimits, PromptCache, tokens_of
from tests.fake_provider import FakeProvider, Usage

KEY_A = "sk-ant-api03-fake-key-a"
KEY_B = "sk-ant-api03-fake-key-b"
BREAKPOINT = {"type": "ephemeral"}


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def block_tokens(block: dict[str, Any]) -> int:
    """The fake's count for one block: its JSON, without the breakpoint marker, over four bytes."""
    bare = {k: v for k, v in block.items() if k != "cache_control"}
    return tokens_of(json.dumps(bare, sort_keys=True, ensure_ascii=False).encode())


def text(label: str, size: int = 2000) -> dict[str, Any]:
    return {"type": "text", "text": (label + " ") * (size // (len(label) + 1))}


def conversation(turns: int, *, system: str = "base", ttl: str | None = None) -> dict[str, Any]:
    """A prompt: two tools, a cached system block, and `turns` user/assistant exchanges; the last message
    carries the breakpoint, as an agent moves it forward every turn."""
    marker = {**BREAKPOINT, "ttl": ttl} if ttl else BREAKPOINT
    tools = [
        {"name": "Read", "description": "read " * 600, "input_schema": {"type": "object"}},
        {"name": "Bash", "description": "run " * 600, "input_schema": {"type": "object"}},
    ]
    messages: list[dict[str, Any]] = []
    for n in range(turns):
        messages.append({"role": "user", "content": [text(f"question {n}", 400)]})
        messages.append({"role": "assistant", "content": [text(f"answer {n}", 400)]})
    last = {**text(f"question {turns}", 400), "cache_control": marker}
    messages.append({"role": "user", "content": [last]})
    return {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "tools": tools,
        "system": [{**text(system, 6000), "cache_control": marker}],
        "messages": messages,
    }


def prompt_tokens(payload: dict[str, Any]) -> int:
    blocks = [*payload["tools"], *payload["system"]]
    blocks += [block for message in payload["messages"] for block in message["content"]]
    return sum(block_tokens(block) for block in blocks)


def up_to_system(payload: dict[str, Any]) -> int:
    return sum(block_tokens(block) for block in [*payload["tools"], *payload["system"]])


# The prompt cache.


def test_a_first_call_writes_its_prefix_and_the_next_turn_reads_it() -> None:
    cache = PromptCache(Clock())
    first = conversation(1)
    usage = cache.usage(KEY_A, first, output_tokens=50)
    total = prompt_tokens(first)
    # Nothing cached yet: everything up to the last breakpoint (here the whole prompt) is written.
    assert usage == Usage(input_tokens=0, cache_write_5m_tokens=total, output_tokens=50)

    second = conversation(2)  # the same prefix, one exchange longer, the breakpoint moved forward
    usage = cache.usage(KEY_A, second, output_tokens=50)
    assert usage.cache_read_tokens == total
    assert usage.cache_write_5m_tokens == prompt_tokens(second) - total
    assert usage.input_tokens == 0


def test_the_part_after_the_last_breakpoint_is_plain_input() -> None:
    cache = PromptCache(Clock())
    payload = conversation(1)
    payload["messages"][-1]["content"].append(text("uncached tail", 800))
    usage = cache.usage(KEY_A, payload, output_tokens=1)
    tail = block_tokens(payload["messages"][-1]["content"][-1])
    assert usage.input_tokens == tail
    assert usage.cache_write_5m_tokens == prompt_tokens(payload) - tail


def test_each_key_has_its_own_cache() -> None:
    cache = PromptCache(Clock())
    cache.usage(KEY_A, conversation(1), output_tokens=1)
    on_b = cache.usage(KEY_B, conversation(2), output_tokens=1)
    assert on_b.cache_read_tokens == 0
    assert on_b.cache_write_5m_tokens == prompt_tokens(conversation(2))
    assert cache.entries(KEY_A) == 2 and cache.entries(KEY_B) == 2  # system and last message, each


def test_entries_expire_after_five_minutes_and_a_read_refreshes_them() -> None:
    clock = Clock()
    cache = PromptCache(clock)
    cache.usage(KEY_A, conversation(1), output_tokens=1)
    clock.now += 240
    assert cache.usage(KEY_A, conversation(2), output_tokens=1).cache_read_tokens > 0
    clock.now += 240  # 8 minutes after the first write, 4 after the read that refreshed it
    assert cache.usage(KEY_A, conversation(3), output_tokens=1).cache_read_tokens == prompt_tokens(
        conversation(2)
    )
    clock.now += 301
    late = cache.usage(KEY_A, conversation(4), output_tokens=1)
    assert late.cache_read_tokens == 0
    assert late.cache_write_5m_tokens == prompt_tokens(conversation(4))


def test_a_one_hour_breakpoint_outlives_five_minutes_and_is_written_at_its_own_rate() -> None:
    clock = Clock()
    cache = PromptCache(clock)
    first = conversation(1, ttl="1h")
    usage = cache.usage(KEY_A, first, output_tokens=1)
    assert (usage.cache_write_1h_tokens, usage.cache_write_5m_tokens) == (prompt_tokens(first), 0)
    clock.now += 1800
    assert cache.usage(KEY_A, conversation(2, ttl="1h"), output_tokens=1).cache_read_tokens == prompt_tokens(
        first
    )


def test_a_changed_system_prompt_reads_only_what_comes_before_it() -> None:
    cache = PromptCache(Clock())
    cache.usage(KEY_A, conversation(1), output_tokens=1)
    changed = conversation(2, system="changed")
    usage = cache.usage(KEY_A, changed, output_tokens=1)
    # The tools carry no breakpoint: nothing cached ends there, so nothing is read.
    assert usage.cache_read_tokens == 0

    cache = PromptCache(Clock())
    payload = conversation(1)
    payload["tools"][-1]["cache_control"] = BREAKPOINT
    cache.usage(KEY_A, payload, output_tokens=1)
    changed["tools"][-1]["cache_control"] = BREAKPOINT
    usage = cache.usage(KEY_A, changed, output_tokens=1)
    tools = sum(block_tokens(tool) for tool in changed["tools"])
    assert usage.cache_read_tokens == tools
    assert usage.cache_write_5m_tokens == prompt_tokens(changed) - tools


def test_a_prefix_further_back_than_the_lookback_is_not_found() -> None:
    cache = PromptCache(Clock())
    cache.usage(KEY_A, conversation(1), output_tokens=1)
    # Two blocks an exchange: the earlier cached message now lies past the lookback window, and only the
    # system breakpoint's entry is found.
    far = conversation(1 + LOOKBACK_BLOCKS // 2 + 1)
    usage = cache.usage(KEY_A, far, output_tokens=1)
    assert usage.cache_read_tokens == up_to_system(far)
    near = conversation(1 + LOOKBACK_BLOCKS // 2 - 1)
    cache = PromptCache(Clock())
    cache.usage(KEY_A, conversation(1), output_tokens=1)
    assert cache.usage(KEY_A, near, output_tokens=1).cache_read_tokens == prompt_tokens(conversation(1))


def test_a_prefix_under_the_minimum_is_not_cached() -> None:
    cache = PromptCache(Clock())
    short = {
        "model": "claude-sonnet-4-5",
        "messages": [{"role": "user", "content": [{**text("hi", 40), "cache_control": BREAKPOINT}]}],
    }
    for _ in range(2):
        usage = cache.usage(KEY_A, short, output_tokens=1)
        assert (usage.cache_read_tokens, usage.cache_write_5m_tokens) == (0, 0)
        assert usage.input_tokens == prompt_tokens({"tools": [], "system": [], **short})


def test_no_breakpoint_no_caching_and_another_model_another_cache() -> None:
    cache = PromptCache(Clock())
    payload = conversation(1)
    cache.usage(KEY_A, payload, output_tokens=1)
    other_model = {**payload, "model": "claude-opus-4-1"}
    assert cache.usage(KEY_A, other_model, output_tokens=1).cache_read_tokens == 0
    bare = json.loads(json.dumps(payload).replace(', "cache_control": {"type": "ephemeral"}', ""))
    usage = cache.usage(KEY_B, bare, output_tokens=1)
    assert usage == Usage(input_tokens=prompt_tokens(payload), output_tokens=1)


# Per-key rate limits.


def refusals(limits: KeyLimits, key: str, requests: int) -> list[int]:
    """Which of `requests` consecutive requests on `key` were refused (time stands still between them,
    so a refusal's window never ends: each limit is followed by refusals until the clock moves)."""
    return [n for n in range(requests) if limits.admit(key) is not None]


def test_without_churn_no_key_is_ever_refused() -> None:
    limits = KeyLimits(Clock())
    assert refusals(limits, KEY_A, 1000) == []


def test_churn_follows_a_seeded_schedule_per_key_and_keys_recover() -> None:
    clock = Clock()
    limits = KeyLimits(clock, churn=True, seed=3, every=(5, 9), lasting=(2.0, 4.0))
    served = 0
    while limits.admit(KEY_A) is None:
        served += 1
    assert 4 <= served <= 8  # the request that reaches the limit is the first refused
    wait = limits.admit(KEY_A)
    assert wait is not None and 2.0 <= wait <= 4.0
    assert limits.admit(KEY_B) is None  # another key is not limited with it
    clock.now += wait
    assert limits.admit(KEY_A) is None  # recovered

    def schedule(seed: int, key: str) -> list[int]:
        churn = KeyLimits(Clock(), churn=True, seed=seed, every=(5, 9), lasting=(2.0, 4.0))
        found = []
        for n in range(200):
            if churn.admit(key) is not None:
                found.append(n)
                churn.clock.now += 10  # type: ignore[attr-defined]
        return found

    assert schedule(3, KEY_A) == schedule(3, KEY_A)
    assert schedule(3, KEY_A) != schedule(4, KEY_A)
    assert schedule(3, KEY_A) != schedule(3, KEY_B)
    assert len(schedule(3, KEY_A)) >= 200 // 10


def test_headers_show_each_keys_own_load() -> None:
    clock = Clock()
    limits = KeyLimits(clock, tokens_per_minute=10_000, tokens_per_5h=100_000)

    def value(key: str, name: str) -> str:
        return dict(limits.headers(key))[f"anthropic-ratelimit-{name}"]

    limits.record(KEY_A, Usage(input_tokens=1000, cache_read_tokens=50_000, cache_write_5m_tokens=2000))
    # Cache reads do not count against input-token limits; output counts in its own family.
    assert value(KEY_A, "input-tokens-remaining") == str(10_000 - 1000 - 2000)
    assert value(KEY_A, "output-tokens-remaining") == str(2_000 - Usage().output_tokens)
    assert value(KEY_A, "tokens-remaining") == str(10_000 - 1000 - 2000 - Usage().output_tokens)
    assert value(KEY_A, "requests-remaining") == str(4000 - 1)
    assert value(KEY_B, "tokens-remaining") == "10000"
    for window in ("5h", "7d"):
        assert float(value(KEY_A, f"unified-{window}-utilization")) > 0
        assert float(value(KEY_B, f"unified-{window}-utilization")) == 0
    clock.now += 61  # the minute's window has passed; the five-hour count stays
    assert value(KEY_A, "tokens-remaining") == "10000"
    assert float(value(KEY_A, "unified-5h-utilization")) > 0


def test_a_limited_key_shows_no_room_until_it_recovers() -> None:
    clock = Clock()
    limits = KeyLimits(clock, churn=True, every=(1, 1), lasting=(3.0, 3.0))
    assert limits.admit(KEY_A) == 3.0
    headers = dict(limits.headers(KEY_A))
    assert headers["anthropic-ratelimit-tokens-remaining"] == "0"
    assert headers["anthropic-ratelimit-requests-remaining"] == "0"
    clock.now += 3
    assert dict(limits.headers(KEY_A))["anthropic-ratelimit-tokens-remaining"] != "0"
    assert limits.refused == {KEY_A: 1}
    assert limits.keys() == {KEY_A}


# Wired into the fake provider.


@pytest.fixture
def fake() -> Any:
    with FakeProvider() as server:
        yield server
        assert server.errors == []


def call(fake: FakeProvider, key: str, payload: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{fake.base_url}/v1/messages",
        json=payload,
        headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
        timeout=10,
    )


def test_the_fake_answers_from_each_keys_cache_and_limits(fake: FakeProvider) -> None:
    clock = Clock()
    fake.prompt_cache = PromptCache(clock)
    fake.key_limits = KeyLimits(clock, churn=True, every=(3, 3), lasting=(4.2, 4.2))
    first = call(fake, KEY_A, conversation(1))
    assert first.json()["usage"]["cache_creation_input_tokens"] == prompt_tokens(conversation(1))
    second = call(fake, KEY_A, conversation(2))
    assert second.json()["usage"]["cache_read_input_tokens"] == prompt_tokens(conversation(1))
    assert int(second.headers["anthropic-ratelimit-tokens-remaining"]) < int(
        call(fake, KEY_B, conversation(1)).headers["anthropic-ratelimit-tokens-remaining"]
    )

    limited = call(fake, KEY_A, conversation(3))  # KEY_A's third request: its scheduled limit
    assert limited.status_code == 429
    assert limited.json()["error"]["type"] == "rate_limit_error"
    assert (limited.headers["retry-after"], limited.headers["x-should-retry"]) == ("5", "true")
    assert limited.headers["anthropic-ratelimit-tokens-remaining"] == "0"
    clock.now += 4.2
    assert call(fake, KEY_A, conversation(3)).status_code == 200


def test_scripted_answers_win_and_reset_turns_the_models_off(fake: FakeProvider) -> None:
    fake.prompt_cache = PromptCache(Clock())
    fake.next(status=500)
    assert call(fake, KEY_A, conversation(1)).status_code == 500
    assert fake.prompt_cache.entries(KEY_A) == 0  # a scripted answer leaves the key's cache alone
    fake.reset()
    plain = call(fake, KEY_A, conversation(1))
    assert plain.json()["usage"] == Usage().anthropic()
