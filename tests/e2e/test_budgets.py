"""Budgets through a real mitmdump: reserve before the call, settle on usage, refund on failure."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.e2e.harness import Proxy, anthropic_client, async_anthropic_client, curl
from tests.fake_provider import FakeProvider, Usage

pytestmark = pytest.mark.e2e

CLIENT_KEY = "sk-sluice-budget-alice"
REAL_KEY = "sk-ant-real-budget-key-0001"
MODEL = "claude-sonnet-4-6"
# A max_tokens of 1000 at $15/MTok output reserves about $0.015 a call; the fake's default usage (21 in,
# 9 out) costs about $0.0002.
# A call that uses all of its max_tokens costs what was reserved for it, so settling it frees no room:
# how many calls fit a budget then does not depend on which finish first.
FULL_USE = Usage(input_tokens=20, output_tokens=1000)
REQUEST: dict[str, Any] = {
    "model": MODEL,
    "max_tokens": 1000,
    "messages": [{"role": "user", "content": "hi"}],
}


def config(usd: float, period: str = "day", without_usage: str = "refund") -> str:
    return f"""
budget_without_usage = "{without_usage}"

[[clients]]
name = "alice"
key = "env:SLUICE_KEY_ALICE"
budget = {{ usd = {usd}, period = "{period}" }}

[[upstreams]]
host = "api.anthropic.com"
provider = "anthropic"
keys = ["env:ANTHROPIC_KEY_1"]
"""


ENV = {"SLUICE_KEY_ALICE": CLIENT_KEY, "ANTHROPIC_KEY_1": REAL_KEY}


def holds(proxy: Proxy) -> list[tuple[str, str, float]]:
    assert proxy.db_path is not None
    with sqlite3.connect(proxy.db_path) as conn:
        return conn.execute("select id, state, amount_usd from budget_holds order by created_at").fetchall()


def clients_json(proxy: Proxy) -> dict[str, dict[str, Any]]:
    sluice = Path(sys.executable).with_name("sluice")
    out = subprocess.run(
        [str(sluice), "clients", "--db", str(proxy.db_path), "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {entry["client"]: entry for entry in json.loads(out)}


def test_spend_settles_to_the_recorded_cost(fake: FakeProvider, start_proxy) -> None:
    proxy = start_proxy(config_toml=config(1.0), env=ENV)
    with anthropic_client(proxy, api_key=CLIENT_KEY) as client:
        for _ in range(3):
            client.messages.create(**REQUEST)
    rows = proxy.wait_for_rows(3)
    assert [state for _, state, _ in holds(proxy)] == ["settled"] * 3
    budget = clients_json(proxy)["alice"]
    assert budget["spent_usd"] == pytest.approx(sum(row["cost_usd"] for row in rows))
    assert budget["reserved_usd"] == 0
    assert budget["limit_usd"] == 1.0 and budget["period"] == "day"


def test_over_budget_is_refused_by_sluice_without_contacting_the_upstream(
    fake: FakeProvider, start_proxy
) -> None:
    proxy = start_proxy(config_toml=config(0.001), env=ENV)
    with (
        anthropic_client(proxy, api_key=CLIENT_KEY) as client,
        pytest.raises(anthropic.RateLimitError) as refused,
    ):
        client.messages.create(**REQUEST)
    assert fake.requests == []
    error = refused.value.body["error"]  # type: ignore[index]
    assert error["type"] == "rate_limit_error"
    assert "alice" in error["message"] and "per day" in error["message"] and "resets at" in error["message"]
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert int(refused.value.response.headers["retry-after"]) > 0
    [row] = proxy.wait_for_rows(1)
    assert row["status"] == 429 and "budget exhausted" in row["rules_applied"]


def test_fifty_concurrent_calls_on_a_nearly_spent_budget_never_overspend(
    fake: FakeProvider, start_proxy
) -> None:
    limit = 0.05  # room for three calls of ~$0.015
    proxy = start_proxy(config_toml=config(limit), env=ENV)
    fake.set_default(delay=0.5, usage=FULL_USE)

    async def burst() -> list[BaseException | Any]:
        async with async_anthropic_client(proxy, api_key=CLIENT_KEY) as client:
            return await asyncio.gather(
                *(client.messages.create(**REQUEST) for _ in range(50)), return_exceptions=True
            )

    results = asyncio.run(burst())
    admitted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, anthropic.RateLimitError)]
    assert len(admitted) + len(refused) == 50
    assert len(admitted) == 3
    assert len(fake.requests) == len(admitted)
    rows = proxy.wait_for_rows(50)
    assert sum(row["cost_usd"] or 0 for row in rows) <= limit
    assert all(state != "held" for _, state, _ in holds(proxy)), "a hold leaked"
    assert clients_json(proxy)["alice"]["reserved_usd"] == 0


@pytest.mark.parametrize(
    ("behaviour", "stream"),
    [
        ({"status": 500}, False),
        ({"reset_before_response": True}, False),
        ({"truncate_after": 0}, True),
    ],
    ids=["upstream-500", "dropped-before-response", "stream-ends-before-usage"],
)
def test_failures_before_usage_refund_the_hold(fake: FakeProvider, start_proxy, behaviour, stream) -> None:
    proxy = start_proxy(config_toml=config(1.0), env=ENV)
    fake.next(**behaviour)
    args = ["-N"] if stream else []
    body = json.dumps({**REQUEST, "stream": stream})
    curl(proxy, "https://api.anthropic.com/v1/messages", "-H", f"x-api-key: {CLIENT_KEY}", "-d", body, *args)
    proxy.wait_for_rows(1)
    [(_, state, amount)] = holds(proxy)
    assert (state, amount) == ("refunded", 0.0)
    assert clients_json(proxy)["alice"]["spent_usd"] == 0


def test_a_stream_ending_without_usage_can_be_charged_its_estimate(fake: FakeProvider, start_proxy) -> None:
    proxy = start_proxy(config_toml=config(1.0, without_usage="charge_estimate"), env=ENV)
    fake.next(truncate_after=0)
    body = json.dumps({**REQUEST, "stream": True})
    curl(proxy, "https://api.anthropic.com/v1/messages", "-N", "-H", f"x-api-key: {CLIENT_KEY}", "-d", body)
    proxy.wait_for_rows(1)
    [(_, state, amount)] = holds(proxy)
    assert state == "settled" and amount == pytest.approx(0.015, rel=0.1)


def test_client_disconnect_mid_stream_settles_what_was_used(fake: FakeProvider, start_proxy) -> None:
    proxy = start_proxy(config_toml=config(1.0), env=ENV)
    fake.next(stall_after=3, stall_seconds=3)
    with anthropic_client(proxy, api_key=CLIENT_KEY) as client, client.messages.stream(**REQUEST) as stream:
        for seen, _ in enumerate(stream):
            if seen == 1:
                break
    [row] = proxy.wait_for_rows(1)
    assert row["error"] and "connection lost" in row["error"]
    [(_, state, amount)] = holds(proxy)
    # The input tokens of message_start were billed by the provider; the estimate is released.
    assert state == "settled" and amount == pytest.approx(row["cost_usd"]) and amount < 0.001
    assert clients_json(proxy)["alice"]["reserved_usd"] == 0


def test_two_proxies_share_one_budget(fake: FakeProvider, start_proxy, tmp_path: Path) -> None:
    shared = tmp_path / "shared.db"
    proxies = [
        start_proxy(
            tmp_path / name,
            config_toml=config(0.05),
            env=ENV,
            set_db=False,
            extra_args=["--set", f"sluice_db={shared}"],
        )
        for name in ("a", "b")
    ]
    fake.set_default(delay=0.5, usage=FULL_USE)

    async def burst(proxy: Proxy) -> list[BaseException | Any]:
        async with async_anthropic_client(proxy, api_key=CLIENT_KEY) as client:
            return await asyncio.gather(
                *(client.messages.create(**REQUEST) for _ in range(10)), return_exceptions=True
            )

    async def both() -> list[BaseException | Any]:
        first, second = await asyncio.gather(burst(proxies[0]), burst(proxies[1]))
        return [*first, *second]

    results = asyncio.run(both())
    admitted = [r for r in results if not isinstance(r, BaseException)]
    assert len(admitted) == 3
    assert len(fake.requests) == len(admitted)
