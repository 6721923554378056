"""Teams, rate limits and window shares through a real mitmdump, with the official SDKs."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from tests.e2e.harness import Proxy, anthropic_client, async_anthropic_client, openai_client
from tests.fake_provider import FakeProvider, Usage

pytestmark = pytest.mark.e2e

KEYS = {"alice": "sk-sluice-gov-alice", "bob": "sk-sluice-gov-bob", "ci": "sk-sluice-gov-ci"}
ENV = {f"SLUICE_KEY_{name.upper()}": key for name, key in KEYS.items()} | {
    "ANTHROPIC_KEY_1": "sk-ant-real-governance-0001",
    "OPENAI_KEY_1": "sk-real-openai-governance-0001",
}
MODEL = "claude-sonnet-4-6"
REQUEST: dict[str, Any] = {
    "model": MODEL,
    "max_tokens": 1000,
    "messages": [{"role": "user", "content": "hi"}],
}
FULL_USE = Usage(input_tokens=20, output_tokens=1000)


def config(clients: str, teams: str = "") -> str:
    return f"""
{clients}
{teams}
[[upstreams]]
host = "api.anthropic.com"
provider = "anthropic"
keys = ["env:ANTHROPIC_KEY_1"]

[[upstreams]]
host = "api.openai.com"
provider = "openai"
keys = ["env:OPENAI_KEY_1"]
"""


def client(name: str, extra: str = "") -> str:
    return f'[[clients]]\nname = "{name}"\nkey = "env:SLUICE_KEY_{name.upper()}"\n{extra}\n'


def sluice_json(proxy: Proxy, command: str) -> Any:
    sluice = Path(sys.executable).with_name("sluice")
    out = subprocess.run(
        [str(sluice), command, "--db", str(proxy.db_path), "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


def test_a_team_budget_binds_two_clients_and_sluice_teams_shows_it(fake: FakeProvider, start_proxy) -> None:
    teams = '[[teams]]\nname = "platform"\nmembers = ["alice", "bob"]\n'
    teams += 'budget = { usd = 0.04, period = "month" }\n'
    proxy = start_proxy(config_toml=config(client("alice") + client("bob") + client("ci"), teams), env=ENV)
    fake.set_default(usage=FULL_USE)  # each call costs about what is held for it: ~$0.015
    with (
        anthropic_client(proxy, api_key=KEYS["alice"]) as alice,
        anthropic_client(proxy, api_key=KEYS["bob"]) as bob,
    ):
        alice.messages.create(**REQUEST)
        bob.messages.create(**REQUEST)
        with pytest.raises(anthropic.RateLimitError) as refused:
            alice.messages.create(**REQUEST)
    message = refused.value.body["error"]["message"]  # type: ignore[index]
    assert "budget exhausted for team platform (client alice)" in message and "per month" in message
    assert refused.value.response.headers["x-sluice-limit"] == "team platform team_budget"
    with anthropic_client(proxy, api_key=KEYS["ci"]) as ci:
        ci.messages.create(**REQUEST)  # not in the team: not held back by it
    rows = proxy.wait_for_rows(4)
    [refusal] = [row for row in rows if row["status"] == 429]
    assert "refused: team budget exhausted (team platform: $0.04/month" in refusal["rules_applied"]
    [team] = sluice_json(proxy, "teams")
    spent = sum(row["cost_usd"] for row in rows if row["client"] in ("alice", "bob") and row["cost_usd"])
    assert team["team"] == "platform" and team["members"] == ["alice", "bob"]
    assert team["spent_usd"] == pytest.approx(spent) and team["reserved_usd"] == 0
    assert team["limit_usd"] == 0.04 and team["resets_at"].endswith("T00:00:00+00:00")


def test_requests_per_minute_answer_like_the_provider_so_the_sdks_can_back_off(
    fake: FakeProvider, start_proxy
) -> None:
    proxy = start_proxy(config_toml=config(client("alice", "limits = { rpm = 2 }")), env=ENV)
    with anthropic_client(proxy, api_key=KEYS["alice"]) as alice:
        alice.messages.create(**REQUEST)
        alice.messages.create(**REQUEST)
        with pytest.raises(anthropic.RateLimitError) as refused:
            alice.messages.create(**REQUEST)
    headers = refused.value.response.headers
    assert headers["anthropic-ratelimit-requests-limit"] == "2"
    assert headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert headers["anthropic-ratelimit-requests-reset"].endswith("Z")
    assert 1 <= int(headers["retry-after"]) <= 60 and 0 < int(headers["retry-after-ms"]) <= 60_000
    assert headers["x-should-retry"] == "true" and headers["x-sluice-limit"] == "client alice rpm"
    assert "2 requests per minute, 2 used in the last minute" in refused.value.body["error"]["message"]  # type: ignore[index]
    assert len(fake.requests) == 2
    # The OpenAI SDK reads the same limit in OpenAI's own header names.
    with openai_client(proxy, api_key=KEYS["alice"]) as chat, pytest.raises(openai.RateLimitError) as second:
        chat.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": "hi"}])
    assert second.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert second.value.response.headers["x-ratelimit-reset-requests"].endswith("s")
    rows = proxy.wait_for_rows(4)
    notes = [row["rules_applied"] for row in rows if row["status"] == 429]
    assert len(notes) == 2 and all(
        "refused: rate limit (client alice: rpm 2, 2 used, retry in" in n for n in notes
    )


def test_calls_at_once_make_the_sdk_retry_until_a_call_ends(fake: FakeProvider, start_proxy) -> None:
    proxy = start_proxy(config_toml=config(client("alice", "limits = { concurrent = 1 }")), env=ENV)
    resume = threading.Event()
    fake.next(stall_after=2, stall_seconds=30, resume=resume)
    with anthropic_client(proxy, api_key=KEYS["alice"]) as first, first.messages.stream(**REQUEST) as stream:
        next(iter(stream))  # the first call is in flight, held by the fake
        result: dict[str, Any] = {}

        def second() -> None:
            with anthropic_client(proxy, api_key=KEYS["alice"], max_retries=8) as retrying:
                result["message"] = retrying.messages.create(**REQUEST)

        thread = threading.Thread(target=second)
        thread.start()
        refusal = proxy.wait_for_rows(1)[0]  # the SDK was refused at least once, and will retry
        assert refusal["status"] == 429
        assert "refused: rate limit (client alice: concurrent 1, 1 used" in refusal["rules_applied"]
        resume.set()
        for _ in stream:
            pass
    thread.join(60)
    assert result["message"].content[0].text  # the SDK's own retry got through once the first call ended
    assert len(fake.requests) == 2


def test_output_tokens_per_minute_settle_to_what_calls_really_used(fake: FakeProvider, start_proxy) -> None:
    proxy = start_proxy(config_toml=config(client("alice", "limits = { output_tpm = 2500 }")), env=ENV)
    with anthropic_client(proxy, api_key=KEYS["alice"]) as alice:
        alice.messages.create(**REQUEST)  # held at its ceiling, 1000, until its row settles it at 9
        proxy.wait_for_rows(1)
        alice.messages.create(**REQUEST)
        alice.messages.create(**REQUEST)  # 9 + 9 + 1000 fit where three ceilings would not
        with pytest.raises(anthropic.RateLimitError) as refused:
            alice.messages.create(**{**REQUEST, "max_tokens": 3000})
    assert "more than the limit: it cannot be admitted" in refused.value.body["error"]["message"]  # type: ignore[index]
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert len(fake.requests) == 3


def test_a_ci_client_is_held_at_its_window_share_while_people_keep_going(
    fake: FakeProvider, start_proxy
) -> None:
    clients = client("alice") + client("ci", 'window_share = { "5h" = 0.6 }')
    proxy = start_proxy(config_toml=config(clients), env=ENV)
    fake.set_default(headers=[("anthropic-ratelimit-unified-5h-utilization", "0.62")])
    with anthropic_client(proxy, api_key=KEYS["alice"]) as alice:
        alice.messages.create(**REQUEST)  # the answer says 62% of the 5-hour window is used
    proxy.wait_for_rows(1)
    with (
        anthropic_client(proxy, api_key=KEYS["ci"]) as ci,
        pytest.raises(anthropic.RateLimitError) as refused,
    ):
        ci.messages.create(**REQUEST)
    message = refused.value.body["error"]["message"]  # type: ignore[index]
    assert "window share for client ci: 60% of the 5h window" in message and "used 62% of it" in message
    assert int(refused.value.response.headers["retry-after"]) > 3600  # the fake's 5h window resets in 3 h
    with anthropic_client(proxy, api_key=KEYS["alice"]) as alice:
        alice.messages.create(**REQUEST)  # people keep going
    rows = proxy.wait_for_rows(3)
    [row] = [row for row in rows if row["client"] == "ci"]
    assert "refused: window share (client ci: 5h 60%, 62% used, resets 20" in row["rules_applied"]
    assert len(fake.requests) == 2


def test_two_proxies_share_one_rate_limit(fake: FakeProvider, start_proxy, tmp_path: Path) -> None:
    shared = tmp_path / "shared.db"
    toml = config(client("alice", "limits = { rpm = 7 }"))
    proxies = [
        start_proxy(
            tmp_path / n, config_toml=toml, env=ENV, set_db=False, extra_args=["--set", f"sluice_db={shared}"]
        )
        for n in ("a", "b")
    ]

    async def burst(proxy: Proxy) -> list[Any]:
        async with async_anthropic_client(proxy, api_key=KEYS["alice"]) as alice:
            return await asyncio.gather(
                *(alice.messages.create(**REQUEST) for _ in range(25)), return_exceptions=True
            )

    async def both() -> list[Any]:
        first, second = await asyncio.gather(burst(proxies[0]), burst(proxies[1]))
        return [*first, *second]

    results = asyncio.run(both())
    assert sum(not isinstance(result, BaseException) for result in results) == 7
    assert all(isinstance(r, anthropic.RateLimitError) for r in results if isinstance(r, BaseException))
    assert len(fake.requests) == 7


def test_a_budget_enforced_mid_stream_ends_the_stream_at_what_was_left(
    fake: FakeProvider, start_proxy
) -> None:
    budget = 'budget = { usd = 0.02, period = "day", enforce = "stream" }'
    proxy = start_proxy(config_toml=config(client("alice", budget)), env=ENV)
    fake.set_default(event_delay=0.0)
    fake.next(usage=FULL_USE)
    with anthropic_client(proxy, api_key=KEYS["alice"]) as alice:
        alice.messages.create(**REQUEST)  # ~$0.0151 of $0.02: the next call's ceiling ($0.015) no longer fits
        [first] = proxy.wait_for_rows(1)
        left = 0.02 - first["cost_usd"]
        words = "abcdefgh " * 600  # each word one delta of 9 characters, about 2.25 tokens
        fake.next(text=words, usage=Usage(input_tokens=20, output_tokens=1400))
        received = ""
        with pytest.raises(anthropic.APIStatusError) as ended, alice.messages.stream(**REQUEST) as stream:
            for text in stream.text_stream:
                received += text
        assert "budget reached mid-stream for client alice" in str(ended.value)
        assert 0 < len(received) < len(words)
        with pytest.raises(anthropic.RateLimitError) as refused:
            alice.messages.create(**REQUEST)  # nothing is left for even its input
        assert "budget exhausted for client alice" in refused.value.body["error"]["message"]  # type: ignore[index]
    rows = proxy.wait_for_rows(3)
    cut = rows[1]
    one_event = 3 * 15 / 1e6  # a delta's tokens (at most 3) at $15 per million output tokens
    assert cut["cost_usd"] == pytest.approx(left, abs=one_event)
    assert cut["cost_usd"] >= left - one_event and "budget reached mid-stream" in cut["error"]
    assert "budget reached mid-stream (client alice: $" in cut["rules_applied"]
    # Output counted from the text up to the event that reached the budget (4 characters a token); the
    # client got at most that (the chunk that held the event is not passed on).
    assert -(-len(received) // 4) <= cut["output_tokens"] < 400
    [alice_budget] = sluice_json(proxy, "clients")
    assert alice_budget["reserved_usd"] == 0
    assert alice_budget["spent_usd"] == pytest.approx(0.02, abs=one_event)
    assert len(fake.requests) == 2
