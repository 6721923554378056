"""A budget shared by proxies on one PostgreSQL database, end to end: two real mitmdumps, the real anthropic
SDK calling through both at once, the fake provider, and a real PostgreSQL server (tests/postgres.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import anthropic
import psycopg
import pytest

from tests.e2e.harness import Proxy, async_anthropic_client
from tests.e2e.test_budgets import CLIENT_KEY, FULL_USE, REQUEST
from tests.e2e.test_postgres_fleet import StartProxy, _on, _wait_for_rows
from tests.fake_provider import FakeProvider
from tests.postgres import PostgresServer

pytestmark = pytest.mark.e2e

BUDGET_USD = 0.05
PER_PROXY = 10
# A client known by its key, with a budget; the key reaches the provider as sent (no [[upstreams]]).
CONFIG = f"""
[[clients]]
name = "alice"
key = "env:SLUICE_KEY_ALICE"
budget = {{ usd = {BUDGET_USD}, period = "day" }}
"""


def _holds(url: str) -> list[tuple[str, str, float]]:
    with psycopg.connect(url) as conn:
        return conn.execute("select id, state, amount_usd from budget_holds").fetchall()


def test_two_proxies_on_one_postgresql_database_never_overspend_one_budget(
    fake: FakeProvider, start_proxy: StartProxy, postgres_server: PostgresServer, postgres_url: str
) -> None:
    proxies = [
        start_proxy(
            config_toml=CONFIG,
            env={"SLUICE_KEY_ALICE": CLIENT_KEY},
            set_db=False,
            extra_args=_on(postgres_url),
        )
        for _ in range(2)
    ]
    # Each call uses all it reserved (about $0.015): settling frees no room, so how many fit is fixed.
    fake.set_default(delay=0.5, usage=FULL_USE)

    async def burst(proxy: Proxy) -> list[BaseException | Any]:
        async with async_anthropic_client(proxy, api_key=CLIENT_KEY) as client:
            calls = (client.messages.create(**REQUEST) for _ in range(PER_PROXY))
            return await asyncio.gather(*calls, return_exceptions=True)

    async def both() -> list[BaseException | Any]:
        first, second = await asyncio.gather(*(burst(proxy) for proxy in proxies))
        return [*first, *second]

    results = asyncio.run(both())
    admitted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(admitted) == 3 == len(fake.requests)  # three calls of $0.015 fit $0.05, a fourth would not
    for error in refused:  # sluice's 429, in Anthropic's envelope, which the SDK reads as such
        assert isinstance(error, anthropic.RateLimitError), error
        assert error.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
        assert "budget exhausted for client alice" in error.message
        assert error.response.headers["x-should-retry"] == "false"
    rows = _wait_for_rows(postgres_url, 2 * PER_PROXY)
    spent = sum(row["cost_usd"] or 0 for row in rows if row["status"] == 200)
    assert 0 < spent <= BUDGET_USD  # no call was in flight past the budget: nothing over it
    assert sum(row["status"] == 429 for row in rows) == len(refused)
    holds = _holds(postgres_url)
    assert sorted(state for _, state, _ in holds) == ["settled"] * 3
    assert sum(amount for _, _, amount in holds) == pytest.approx(spent)
    for proxy in proxies:
        proxy.stop()
        assert not proxy.tracebacks()
        assert postgres_server.password not in proxy.log_text()
