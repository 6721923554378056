"""A client holding a client key tries to get more than its rate limits allow, or to hurt the others
through them: a compressed body whose input sluice cannot count, sluice's own 429s taken for a credential's
reading, a stream dropped while it holds a concurrency slot. Real mitmdump, real clients, the fake provider
upstream."""

from __future__ import annotations

import gzip
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.e2e.harness import Proxy, anthropic_client, curl
from tests.fake_provider import FakeProvider

pytestmark = pytest.mark.e2e

CLIENT_KEY = "sk-sluice-gov-mallory"
ENV = {"SLUICE_KEY_MALLORY": CLIENT_KEY, "ANTHROPIC_KEY_1": "sk-ant-real-govredteam-0001"}
MESSAGES = "https://api.anthropic.com/v1/messages"
REQUEST: dict[str, Any] = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 100,
    "messages": [{"role": "user", "content": "hi"}],
}


def config(limits: str) -> str:
    return f"""
[[clients]]
name = "mallory"
key = "env:SLUICE_KEY_MALLORY"
limits = {{ {limits} }}

[[upstreams]]
host = "api.anthropic.com"
provider = "anthropic"
keys = ["env:ANTHROPIC_KEY_1"]
"""


def table(proxy: Proxy, name: str) -> list[dict[str, Any]]:
    assert proxy.db_path is not None
    with sqlite3.connect(proxy.db_path) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute(f"select * from {name}")]


def test_a_gzipped_prompt_cannot_slip_past_input_tokens_per_minute(
    fake: FakeProvider, start_proxy, tmp_path: Path
) -> None:
    proxy = start_proxy(config_toml=config("input_tpm = 2000"), env=ENV)
    # About 25,000 tokens of prompt, which gzip shrinks to a few hundred bytes: counted by its size on the
    # wire it would look like a hundred tokens.
    prompt = {**REQUEST, "messages": [{"role": "user", "content": "hammer " * 14_000}]}
    packed = tmp_path / "body.gz"
    packed.write_bytes(gzip.compress(json.dumps(prompt).encode()))
    assert packed.stat().st_size < 2000
    result = curl(
        proxy,
        MESSAGES,
        "-H",
        f"x-api-key: {CLIENT_KEY}",
        "-H",
        "content-type: application/json",
        "-H",
        "content-encoding: gzip",
        "--data-binary",
        f"@{packed}",
    )
    assert result.status == 429
    message = json.loads(result.body)["error"]["message"]
    assert "2,000 input tokens per minute" in message and "compressed" in message
    assert result.header("x-should-retry") == "false"
    assert fake.requests == []
    [row] = proxy.wait_for_rows(1)
    assert "refused: rate limit (client mallory: input_tpm 2000" in row["rules_applied"]


def test_sluices_own_limit_headers_never_become_a_credentials_reading(
    fake: FakeProvider, start_proxy
) -> None:
    proxy = start_proxy(config_toml=config("rpm = 1"), env=ENV)
    with anthropic_client(proxy, api_key=CLIENT_KEY, max_retries=0) as mallory:
        mallory.messages.create(**REQUEST)
        for _ in range(3):
            with pytest.raises(anthropic.RateLimitError) as refused:
                mallory.messages.create(**REQUEST)
    assert refused.value.response.headers["anthropic-ratelimit-requests-remaining"] == "0"
    rows = proxy.wait_for_rows(4)
    assert [row["status"] for row in rows].count(429) == 3
    # What the provider said of its credential stands; sluice's refusals name no credential and are not
    # stored as one's (`sluice quota` would show a credential "none" at 0 requests left).
    readings = table(proxy, "rate_limits")
    assert {reading["credential"] for reading in readings} == {"keys[0] env:ANTHROPIC_KEY_1"}
    remaining = [r["value"] for r in readings if r["header"] == "anthropic-ratelimit-requests-remaining"]
    assert remaining and "0" not in remaining
    assert all(row["rate_limits"] is None for row in rows if row["status"] == 429)


def test_a_stream_dropped_mid_way_gives_its_concurrency_slot_back(fake: FakeProvider, start_proxy) -> None:
    proxy = start_proxy(config_toml=config("concurrent = 1"), env=ENV)
    resume = threading.Event()
    fake.next(stall_after=2, stall_seconds=30, resume=resume)
    with anthropic_client(proxy, api_key=CLIENT_KEY, max_retries=0) as first:
        with first.messages.stream(**REQUEST) as stream:
            next(iter(stream))  # in flight, held by the fake; then the client hangs up
        [dropped] = proxy.wait_for_rows(1)
    resume.set()
    assert dropped["error"] is not None
    [admission] = table(proxy, "rate_admissions")
    assert admission["state"] == "done"
    with anthropic_client(proxy, api_key=CLIENT_KEY, max_retries=0) as second:
        assert second.messages.create(**REQUEST).content[0].text  # the slot is free again at once
