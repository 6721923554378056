"""README.md's "Adding a provider", done: the toy module (tests/rules/providers/toy.py) registers itself,
and every generic part of sluice meters, rewrites, estimates, shows and answers its calls without a change.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from rules.config import Rules, SystemBlock
from rules.estimate import estimate_tokens
from rules.provider_answers import headroom, parse_cooldown
from rules.providers import classify, provider, provider_for_host
from rules.rewrite import RuleContext, apply_request_rules
from rules.transcript import reassemble
from rules.usage import StreamReader, read_response_body
from state.ratelimits import summarize
from tests.rules.providers import toy


def test_the_toy_provider_is_classified_read_rewritten_estimated_and_shown() -> None:
    endpoint = classify("POST", "/gateway/toy/v1/complete?x=1")
    assert endpoint is not None and (endpoint.provider, endpoint.api) == ("toy", "toy_complete")
    wire = endpoint.wire
    assert provider_for_host("API.toy.example") is toy.TOY

    answer = {"model": "toy-1", "id": "t1", "text": "hi", "usage": {"in": 10, "cached": 4, "out": 3}}
    reading = read_response_body(wire, json.dumps(answer).encode(), 200)
    assert (reading.model, reading.usage.input_tokens, reading.usage.cache_read_tokens) == ("toy-1", 6, 4)
    assert reading.complete and reading.error is None

    stream = StreamReader(wire)
    assert stream.feed(b'data: {"delta": "h"}\n\n') is True  # the first output: time to first token
    stream.feed(b'event: done\ndata: {"model": "toy-1", "usage": {"in": 5, "out": 2}}\n\n')
    streamed = stream.finish()
    assert streamed.complete and streamed.usage.output_tokens == 2
    cut = StreamReader(wire)
    cut.feed(b'data: {"delta": "h"}\n\n')
    assert cut.finish().error == "stream ended before done"

    rules = Rules(system_blocks=[SystemBlock(name="house", text="Be brief.")], model_aliases={"toy": "toy-1"})
    context = RuleContext(wire=wire, host="api.toy.example", rules=rules)
    result = apply_request_rules(b'{"model": "toy", "prompt": "hello", "limit": 50}', context)
    assert result.body is not None
    assert json.loads(result.body) == {
        "model": "toy-1",
        "prompt": "hello",
        "limit": 50,
        "instructions": ["Be brief."],
    }
    assert result.applied == ["model_alias:toy->toy-1", "system_block:house"]

    assert estimate_tokens(wire, {"limit": 50}, 400) == (100, 50)
    assert [part.text for part in reassemble(wire, json.dumps(answer).encode()).parts] == ["hi"]
    assert json.loads(provider("toy").error_body(429, "slow down", None)) == {
        "problem": {"status": 429, "detail": "slow down"}
    }


def test_the_toy_providers_rate_limits_are_read_for_the_pool_and_the_quota_view() -> None:
    headers = {
        "X-Toy-Ratelimit-Limit-Calls": "100",
        "x-toy-ratelimit-remaining-calls": "0",
        "x-toy-ratelimit-reset-calls": "30s",
        "x-toy-ratelimit-limit-words": "1000",
        "x-toy-ratelimit-remaining-words": "800",
    }
    assert headroom(headers) == 0.0
    assert parse_cooldown(headers, now=1_000.0, default_s=60.0) == 30.0
    at = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    summary = summarize(headers, at)
    assert [(limit.provider, limit.name, limit.limit, limit.remaining) for limit in summary.limits] == [
        ("toy", "calls", 100, 0),
        ("toy", "words", 1000, 800),
    ]
    assert summary.limits[0].reset_at == at + timedelta(seconds=30) and not summary.other
